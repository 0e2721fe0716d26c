//! Runtime control of a running `m365-sim` from another process (the chaos driver, scripts):
//! a small plain-HTTP API, bound to loopback by the binary's `--control` flag.
//!
//! | request | effect |
//! |---|---|
//! | `GET /truth` | the tenant's ground truth ([`Truth`]) as JSON |
//! | `GET /faults` | the current random-fault rates ([`FaultSpec`]) |
//! | `POST /faults` | a [`FaultBurst`]: set some rates, optionally only for `for_secs` seconds |
//! | `POST /tokens/expire` | every access token issued so far answers 401 from now on |
//! | `POST /blobs/expire-next-listed` | `{"count": n}`: the next n listed blobs expire right after their listing |
//! | `GET /requests/summary` | exact request counters ([`RequestSummary`]) |
//! | `POST /devo/stop` | the fake Devo closes its listeners and drops its connections |
//! | `POST /devo/resume` | the fake Devo listens again on the same ports |
//! | `GET /devo/stats` | lines received, open connections, whether it listens |
//!
//! A burst with `for_secs` restores the rates it changed when it ends, unless a later burst
//! changed them again meanwhile (each burst carries a generation number).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::devo::FakeDevo;
use crate::tenant::{FaultSpec, SimHandle};

/// A change of random-fault rates (absent fields are left as they are).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultBurst {
    /// Fraction of Activity API requests answered AF429.
    pub throttle_fraction: Option<f64>,
    /// Fraction answered 500 AF50000.
    pub error_500_fraction: Option<f64>,
    /// Fraction answered 503.
    pub error_503_fraction: Option<f64>,
    /// Fraction of listed blobs that expire right after the listing (expiry race).
    pub expiry_race_fraction: Option<f64>,
    /// Restore the previous values of the changed rates after this many seconds.
    pub for_secs: Option<u64>,
}

impl FaultBurst {
    /// Every fraction must lie in `0..=1`.
    fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("throttle_fraction", self.throttle_fraction),
            ("error_500_fraction", self.error_500_fraction),
            ("error_503_fraction", self.error_503_fraction),
            ("expiry_race_fraction", self.expiry_race_fraction),
        ] {
            if let Some(v) = v
                && !(0.0..=1.0).contains(&v)
            {
                return Err(format!("{name} must be between 0 and 1, got {v}"));
            }
        }
        Ok(())
    }

    /// Writes the given rates into `spec`; returns the values they replaced.
    fn apply(&self, spec: &mut FaultSpec) -> FaultBurst {
        let mut old = FaultBurst::default();
        if let Some(v) = self.throttle_fraction {
            old.throttle_fraction = Some(std::mem::replace(&mut spec.throttle_fraction, v));
        }
        if let Some(v) = self.error_500_fraction {
            old.error_500_fraction = Some(std::mem::replace(&mut spec.error_500_fraction, v));
        }
        if let Some(v) = self.error_503_fraction {
            old.error_503_fraction = Some(std::mem::replace(&mut spec.error_503_fraction, v));
        }
        if let Some(v) = self.expiry_race_fraction {
            old.expiry_race_fraction = Some(std::mem::replace(&mut spec.expiry_race_fraction, v));
        }
        old
    }
}

/// What the fake Devo reports on `GET /devo/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevoStatus {
    /// Whether the listeners are open.
    pub listening: bool,
    /// Events received so far.
    pub lines_received: u64,
    /// Syslog connections open now.
    pub open_connections: u64,
    /// Failed TLS handshakes so far.
    pub handshake_failures: u64,
}

/// What the control API acts on.
#[derive(Clone)]
pub struct ControlState {
    sim: SimHandle,
    devo: Option<Arc<FakeDevo>>,
    /// Generation of the latest burst per rate (throttle, 500, 503, expiry race).
    generations: Arc<[AtomicU64; 4]>,
    /// Cancels pending burst restorations when the server stops.
    cancel: CancellationToken,
}

impl std::fmt::Debug for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlState")
            .field("sim", &self.sim)
            .field("devo", &self.devo.is_some())
            .finish_non_exhaustive()
    }
}

impl ControlState {
    /// Control over `sim` and, when given, the fake Devo beside it.
    pub fn new(sim: SimHandle, devo: Option<Arc<FakeDevo>>) -> ControlState {
        ControlState {
            sim,
            devo,
            generations: Arc::new(Default::default()),
            cancel: CancellationToken::new(),
        }
    }

    /// Applies a burst now and schedules its end (see the module docs).
    pub fn apply_burst(&self, burst: &FaultBurst) -> Result<FaultSpec, String> {
        burst.validate()?;
        let faults = self.sim.faults();
        let mut old = FaultBurst::default();
        faults.update(|spec| old = burst.apply(spec));
        let touched = [
            burst.throttle_fraction.is_some(),
            burst.error_500_fraction.is_some(),
            burst.error_503_fraction.is_some(),
            burst.expiry_race_fraction.is_some(),
        ];
        let gens: Vec<Option<u64>> = touched
            .iter()
            .zip(self.generations.iter())
            .map(|(&t, g)| t.then(|| g.fetch_add(1, Ordering::SeqCst) + 1))
            .collect();
        if let Some(secs) = burst.for_secs {
            let state = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = state.cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                }
                // Restore only the rates no later burst has changed since.
                let current = |i: usize| {
                    gens[i].is_some_and(|g| state.generations[i].load(Ordering::SeqCst) == g)
                };
                let restore = FaultBurst {
                    throttle_fraction: old.throttle_fraction.filter(|_| current(0)),
                    error_500_fraction: old.error_500_fraction.filter(|_| current(1)),
                    error_503_fraction: old.error_503_fraction.filter(|_| current(2)),
                    expiry_race_fraction: old.expiry_race_fraction.filter(|_| current(3)),
                    for_secs: None,
                };
                state.sim.faults().update(|spec| {
                    restore.apply(spec);
                });
                tracing::info!("Fault burst ended.");
            });
        }
        Ok(faults.spec())
    }

    async fn devo_status(&self) -> Option<DevoStatus> {
        let devo = self.devo.as_ref()?;
        let stats = devo.stats();
        Some(DevoStatus {
            listening: devo.is_listening().await,
            lines_received: stats.lines_received,
            open_connections: stats.open_connections,
            handshake_failures: stats.handshake_failures,
        })
    }
}

/// The control routes.
pub fn router(state: ControlState) -> Router {
    Router::new()
        .route("/truth", get(truth))
        .route("/faults", get(faults).post(burst))
        .route("/tokens/expire", post(expire_tokens))
        .route("/blobs/expire-next-listed", post(expire_next_listed))
        .route("/requests/summary", get(summary))
        .route("/devo/stop", post(devo_stop))
        .route("/devo/resume", post(devo_resume))
        .route("/devo/stats", get(devo_stats))
        .with_state(state)
}

/// A running control server.
#[derive(Debug)]
pub struct ControlServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// Binds `addr` (use a loopback address) and serves the control API.
    pub async fn start(addr: SocketAddr, state: ControlState) -> std::io::Result<ControlServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cancel = state.cancel.clone();
        let stop = cancel.clone();
        let app = router(state);
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "The control API stopped.");
            }
        });
        Ok(ControlServer { addr, cancel, task })
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:4321`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (and drops pending burst restorations).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": msg.into()}))).into_response()
}

fn no_devo() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no fake Devo runs here (start m365-sim with --devo)",
    )
}

async fn truth(State(st): State<ControlState>) -> Response {
    // Building the truth walks every blob: keep it off the async workers.
    let sim = st.sim.clone();
    match tokio::task::spawn_blocking(move || sim.truth()).await {
        Ok(t) => Json(t).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn faults(State(st): State<ControlState>) -> Response {
    Json(st.sim.faults().spec()).into_response()
}

async fn burst(State(st): State<ControlState>, Json(burst): Json<FaultBurst>) -> Response {
    match st.apply_burst(&burst) {
        Ok(spec) => {
            tracing::info!(?burst, "Fault burst applied.");
            Json(spec).into_response()
        }
        Err(msg) => error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn expire_tokens(State(st): State<ControlState>) -> Response {
    st.sim.expire_tokens();
    tracing::info!("Every access token issued so far is expired.");
    Json(serde_json::json!({"expired": true})).into_response()
}

/// Body of `POST /blobs/expire-next-listed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpireNext {
    count: u32,
}

async fn expire_next_listed(
    State(st): State<ControlState>,
    Json(req): Json<ExpireNext>,
) -> Response {
    st.sim.faults().expire_next_listed(req.count);
    tracing::info!(count = req.count, "The next listed blobs will expire.");
    Json(serde_json::json!({"count": req.count})).into_response()
}

async fn summary(State(st): State<ControlState>) -> Response {
    Json(st.sim.request_summary()).into_response()
}

async fn devo_stop(State(st): State<ControlState>) -> Response {
    let Some(devo) = &st.devo else {
        return no_devo();
    };
    devo.stop_listening().await;
    tracing::info!("The fake Devo stopped listening.");
    Json(st.devo_status().await).into_response()
}

async fn devo_resume(State(st): State<ControlState>) -> Response {
    let Some(devo) = &st.devo else {
        return no_devo();
    };
    if let Err(e) = devo.resume_listening().await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    tracing::info!("The fake Devo listens again.");
    Json(st.devo_status().await).into_response()
}

async fn devo_stats(State(st): State<ControlState>) -> Response {
    match st.devo_status().await {
        Some(s) => Json(s).into_response(),
        None => no_devo(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a burst sets only the named rates and reports what it replaced.
    #[test]
    fn burst_applies_named_rates_only() {
        let mut spec = FaultSpec {
            error_503_fraction: 0.25,
            ..FaultSpec::default()
        };
        let burst = FaultBurst {
            throttle_fraction: Some(0.5),
            ..FaultBurst::default()
        };
        let old = burst.apply(&mut spec);
        assert_eq!(spec.throttle_fraction, 0.5);
        assert_eq!(spec.error_503_fraction, 0.25);
        assert_eq!(old.throttle_fraction, Some(0.0));
        assert_eq!(old.error_503_fraction, None);
    }

    // Proves fractions outside 0..=1 are refused.
    #[test]
    fn burst_fractions_are_checked() {
        let bad = FaultBurst {
            error_500_fraction: Some(1.5),
            ..FaultBurst::default()
        };
        assert!(bad.validate().unwrap_err().contains("error_500_fraction"));
        assert!(FaultBurst::default().validate().is_ok());
    }
}
