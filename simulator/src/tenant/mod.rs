//! The fake Microsoft 365 tenant: Entra ID token endpoints and the Office 365 Management
//! Activity API, faithful enough to be the ground truth the product's tests measure against.
//!
//! Layout:
//! - `config`    — [`SimConfig`], [`TenantSpec`], [`AppSpec`], fault and throttle specs.
//! - `state`     — blobs, subscriptions, the clock-driven generator, logs.
//! - `generator` — seeded realistic records and the intrusion scenario.
//! - `files`     — real records loaded from JSON lines / arrays, served byte for byte.
//! - `auth`      — token endpoints (secret, certificate assertion) and bearer checks.
//! - `consent`   — admin consent: authorize endpoints and authorization-code redemption.
//! - `routes`    — the HTTP surface and the `/_sim/*` inspection endpoints.
//! - `faults`    — [`FaultHandle`]: random and scripted faults, quotas, clock skew.
//! - `truth`     — [`Truth`], [`Violation`], [`RequestLog`].
//! - `server`    — HTTPS/HTTP serving and shutdown.
//!
//! ```no_run
//! # async fn demo() -> Result<(), m365_sim::tenant::SimError> {
//! use m365_sim::tenant::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::for_tests(&["11111111-2222-3333-4444-555555555555"])).await?;
//! let token_url = sim.token_url("11111111-2222-3333-4444-555555555555", true);
//! // ... run the collector against sim.base_url(), trusting sim.ca_pem() ...
//! let truth = sim.truth();
//! sim.shutdown().await;
//! # let _ = (token_url, truth); Ok(()) }
//! ```

pub mod auth;
pub mod config;
pub mod consent;
pub mod faults;
pub mod files;
pub mod generator;
mod inspect;
mod routes;
mod server;
pub mod state;
pub mod truth;

use std::net::SocketAddr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::certs::{CertError, TestPki};

pub use auth::{CertConfigError, thumbprints};
pub use config::{
    AppSpec, ContentType, FaultSpec, Intrusion, NextPageHeader, ROLE_ACTIVITY_FEED_READ,
    ROLE_ACTIVITY_FEED_READ_DLP, RecordFileSpec, SimConfig, TEST_CLIENT_ID, TEST_CLIENT_SECRET,
    TEST_PUBLISHER_ID, TenantSpec, ThrottleSpec,
};
pub use consent::ConsentGrant;
pub use faults::{FaultHandle, FaultKind, FaultTarget};
pub use files::FileError;
pub use inspect::RecordView;
pub use truth::{
    BlobTruth, Endpoint, RequestLog, RequestSummary, StreamTruth, Truth, Violation, ViolationKind,
};

use faults::FaultState;
use generator::TenantCtx;
use state::{Env, RecordRef, SimState};

/// Why the simulator could not start or an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is invalid (every problem listed).
    #[error("invalid simulator configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// A registered certificate is unusable.
    #[error(transparent)]
    Cert(#[from] CertConfigError),
    /// The test PKI could not be generated.
    #[error("test PKI: {0}")]
    Pki(#[from] CertError),
    /// Binding or serving failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A record file is unusable.
    #[error(transparent)]
    File(#[from] FileError),
    /// No tenant with that id.
    #[error("unknown tenant {0}")]
    UnknownTenant(String),
    /// No blob with that content id.
    #[error("unknown content id {0}")]
    UnknownContent(String),
}

/// State shared by every request handler.
pub(crate) struct Shared {
    pub(crate) env: Env,
    pub(crate) keys: auth::AppKeys,
    pub(crate) token_key: auth::TokenKey,
    state: Mutex<SimState>,
    pub(crate) faults: FaultHandle,
    pub(crate) base_url: Url,
    /// Authorization codes of the admin-consent flow.
    pub(crate) consent: consent::ConsentState,
}

impl Shared {
    /// The server clock (real time plus skew).
    pub(crate) fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::seconds(self.faults.clock_skew_secs())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        // State is plain data; after a panic elsewhere keep serving what is there.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock after generating every blob due by `now`.
    pub(crate) fn lock_advanced(&self, now: DateTime<Utc>) -> MutexGuard<'_, SimState> {
        let spec = self.faults.spec();
        let mut st = self.lock();
        st.advance(&self.env, &spec, now);
        st
    }

    pub(crate) fn truth(&self) -> Truth {
        let now = self.now();
        self.lock_advanced(now).truth(&self.env, now)
    }
}

/// A clonable handle on a running [`Simulator`]: truth, faults and token expiry, for
/// control endpoints and background tasks. It keeps the state alive, not the server.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("base_url", &self.shared.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// Ground truth snapshot.
    pub fn truth(&self) -> Truth {
        self.shared.truth()
    }

    /// Runtime control of faults, quotas and clock skew.
    pub fn faults(&self) -> FaultHandle {
        self.shared.faults.clone()
    }

    /// Make every access token issued so far expire now (the API answers 401 to them).
    pub fn expire_tokens(&self) {
        self.shared
            .faults
            .expire_tokens_issued_before(self.shared.now().timestamp());
    }

    /// Exact counters over every request.
    pub fn request_summary(&self) -> RequestSummary {
        let st = self.shared.lock();
        let mut s = st.summary.clone();
        s.tokens_issued = st.tokens_issued;
        s
    }
}

/// A running fake tenant. Dropping it without [`Simulator::shutdown`] also stops serving.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    pki: Option<TestPki>,
    cancel: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("base_url", &self.shared.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Validate `cfg`, build the content, bind and start serving.
    pub async fn start(cfg: SimConfig) -> Result<Simulator, SimError> {
        cfg.validate().map_err(SimError::Config)?;
        let keys = auth::load_app_keys(&cfg)?;
        let file_records = cfg
            .record_files
            .iter()
            .map(|f| files::load(&f.path, f.field.as_deref()).map(|r| (f.clone(), r)))
            .collect::<Result<Vec<_>, _>>()?;
        let tcp = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .map_err(|source| SimError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let addr = tcp.local_addr().map_err(|source| SimError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let (pki, tls) = if cfg.tls {
            let pki = TestPki::generate("m365-sim")?;
            let server_config = pki.server_config(false)?;
            (Some(pki), Some(server_config))
        } else {
            (None, None)
        };
        let scheme = if cfg.tls { "https" } else { "http" };
        let base_url = Url::parse(&format!("{scheme}://{addr}/")).map_err(|e| {
            SimError::Config(vec![format!(
                "bind: cannot form a base URL from {addr}: {e}"
            )])
        })?;
        let skew = Arc::new(AtomicI64::new(cfg.clock_skew_secs));
        let faults = FaultHandle {
            state: Arc::new(Mutex::new(FaultState::new(
                cfg.faults.clone(),
                cfg.throttle.clone(),
                cfg.seed,
            ))),
            skew_secs: skew,
            tokens_valid_from: Arc::new(AtomicI64::new(i64::MIN)),
        };
        let started_at = Utc::now() + Duration::seconds(cfg.clock_skew_secs);
        let ctxs = cfg
            .tenants
            .iter()
            .map(|t| TenantCtx {
                tenant_id: t.tenant_id.clone(),
                domain: t.primary_domain(),
            })
            .collect();
        let env = Env {
            cfg,
            ctxs,
            started_at,
        };
        let mut st = SimState::new(&env);
        st.advance(&env, &env.cfg.faults, started_at);
        add_scenario(&env, &mut st, started_at);
        for (spec, records) in file_records {
            let ti = match &spec.tenant_id {
                Some(t) => env
                    .tenant_index(t)
                    .ok_or_else(|| SimError::UnknownTenant(t.clone()))?,
                None => 0,
            };
            // File records appear over the last hour before the start.
            publish_file_records(
                &env,
                &mut st,
                ti,
                &records,
                spec.records_per_blob,
                started_at - Duration::hours(1),
            );
        }
        let shared = Arc::new(Shared {
            env,
            keys,
            token_key: auth::TokenKey::random(),
            state: Mutex::new(st),
            faults,
            base_url,
            consent: consent::ConsentState::default(),
        });
        let cancel = CancellationToken::new();
        let router = routes::router(shared.clone());
        let server = server::spawn(tcp, tls, router, cancel.clone())
            .map_err(|source| SimError::Bind { addr, source })?;
        tracing::info!(base_url = %shared.base_url, "Fake Microsoft 365 tenant started.");
        Ok(Simulator {
            shared,
            addr,
            pki,
            cancel,
            server: Some(server),
        })
    }

    /// Base URL (`https://127.0.0.1:port/`) for tokens, the API, `contentUri`s and next pages.
    pub fn base_url(&self) -> Url {
        self.shared.base_url.clone()
    }

    /// Bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// CA certificate (PEM) the server certificate chains to; empty in plain-HTTP mode.
    pub fn ca_pem(&self) -> &str {
        self.pki
            .as_ref()
            .map(|p| p.ca_cert_pem.as_str())
            .unwrap_or_default()
    }

    /// The per-run test PKI (TLS mode only), e.g. to write it to disk.
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// Token endpoint URL of a tenant (v2 `/oauth2/v2.0/token` or v1 `/oauth2/token`).
    pub fn token_url(&self, tenant: &str, v2: bool) -> Url {
        let path = if v2 {
            "oauth2/v2.0/token"
        } else {
            "oauth2/token"
        };
        self.join(&format!("{tenant}/{path}"))
    }

    /// Activity API root of a tenant: `{base}/api/v1.0/{tenant}/activity/feed/`.
    pub fn api_root(&self, tenant: &str) -> Url {
        self.join(&format!("api/v1.0/{tenant}/activity/feed/"))
    }

    fn join(&self, path: &str) -> Url {
        let mut u = self.shared.base_url.clone();
        u.set_path(path);
        u
    }

    /// The resource (audience) tokens are requested for.
    pub fn resource(&self) -> &str {
        &self.shared.env.cfg.resource
    }

    /// The configuration the simulator runs with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.env.cfg
    }

    /// Current server time (real time plus skew).
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.now()
    }

    /// Ground truth snapshot.
    pub fn truth(&self) -> Truth {
        self.shared.truth()
    }

    /// Make every access token issued so far expire now (the API answers 401 to them).
    pub fn expire_tokens(&self) {
        self.shared
            .faults
            .expire_tokens_issued_before(self.now().timestamp());
    }

    /// A cheap handle for runtime control from other tasks (see [`SimHandle`]).
    pub fn handle(&self) -> SimHandle {
        SimHandle {
            shared: self.shared.clone(),
        }
    }

    /// Rules broken by clients so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.shared.lock().violations()
    }

    /// Logged requests (up to the configured limit, oldest dropped first).
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.lock().requests()
    }

    /// Exact counters over every request.
    pub fn request_summary(&self) -> RequestSummary {
        let st = self.shared.lock();
        let mut s = st.summary.clone();
        s.tokens_issued = st.tokens_issued;
        s
    }

    /// Access tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.lock().tokens_issued
    }

    /// Runtime control of faults, quotas and clock skew.
    pub fn faults(&self) -> FaultHandle {
        self.shared.faults.clone()
    }

    fn tenant_index(&self, tenant: &str) -> Result<usize, SimError> {
        self.shared
            .env
            .tenant_index(tenant)
            .ok_or_else(|| SimError::UnknownTenant(tenant.to_owned()))
    }

    /// An administrator disables a subscription: listing and downloads answer AF20023 and
    /// content published meanwhile is never listable, until the client calls `start`.
    pub fn disable_subscription(
        &self,
        tenant: &str,
        content_type: ContentType,
    ) -> Result<(), SimError> {
        let ti = self.tenant_index(tenant)?;
        let now = self.now();
        self.shared
            .lock_advanced(now)
            .admin_disable(ti, content_type, now);
        Ok(())
    }

    /// Enable a subscription directly (as if `start` had been called earlier).
    pub fn enable_subscription(
        &self,
        tenant: &str,
        content_type: ContentType,
    ) -> Result<(), SimError> {
        let ti = self.tenant_index(tenant)?;
        let now = self.now();
        let mut st = self.shared.lock_advanced(now);
        if st.check_enabled(ti, content_type).is_ok() {
            return Ok(());
        }
        // Errors here are only AF20024 / the start-interval rule, neither of which applies.
        let _ = st.start(&self.shared.env, ti, content_type, now);
        Ok(())
    }

    /// Publish a blob now with the given records (exact bytes; `Id` read from each record).
    /// Returns the content id.
    pub fn publish_records(
        &self,
        tenant: &str,
        content_type: ContentType,
        records: Vec<String>,
    ) -> Result<String, SimError> {
        let ti = self.tenant_index(tenant)?;
        let now = self.now();
        let refs = records
            .into_iter()
            .map(|bytes| {
                let id = record_id_of(&bytes);
                RecordRef::Lit {
                    id: id.into(),
                    bytes: bytes.into(),
                }
            })
            .collect();
        let mut st = self.shared.lock_advanced(now);
        let idx = st.add_blob(&self.shared.env, ti, content_type, now, now, refs);
        Ok(st.blobs[idx].content_id.clone())
    }

    /// Publish a blob now with `count` generated records. Returns the content id.
    pub fn publish_generated(
        &self,
        tenant: &str,
        content_type: ContentType,
        count: usize,
    ) -> Result<String, SimError> {
        let ti = self.tenant_index(tenant)?;
        let now = self.now();
        let mut st = self.shared.lock_advanced(now);
        let base = generator::mix(self.shared.env.cfg.seed, st.blobs.len() as u64 ^ 0xb10b);
        let refs = (0..count as u64)
            .map(|i| RecordRef::Gen {
                seed: generator::mix(base, i),
                created: now,
            })
            .collect();
        let idx = st.add_blob(&self.shared.env, ti, content_type, now, now, refs);
        Ok(st.blobs[idx].content_id.clone())
    }

    /// Publish the records of a file now (see [`RecordFileSpec`]). Returns the content ids.
    pub fn publish_file(&self, spec: &RecordFileSpec) -> Result<Vec<String>, SimError> {
        let ti = match &spec.tenant_id {
            Some(t) => self.tenant_index(t)?,
            None => 0,
        };
        let records = files::load(&spec.path, spec.field.as_deref())?;
        let now = self.now();
        let mut st = self.shared.lock_advanced(now);
        Ok(publish_file_records(
            &self.shared.env,
            &mut st,
            ti,
            &records,
            spec.records_per_blob,
            now,
        ))
    }

    /// Make a blob expire now (subsequent downloads answer AF20051).
    pub fn expire_blob(&self, content_id: &str) -> Result<(), SimError> {
        let now = self.now();
        let mut st = self.shared.lock();
        let idx = st
            .blob_index(content_id)
            .ok_or_else(|| SimError::UnknownContent(content_id.to_owned()))?;
        st.blobs[idx].expiration = now;
        Ok(())
    }

    /// Stop serving and wait for the server task (open connections are closed gracefully,
    /// at most a few seconds).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.server.take() {
            let abort = handle.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(5), handle)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn record_id_of(bytes: &str) -> String {
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(rename = "Id")]
        id: Option<serde_json::Value>,
    }
    match serde_json::from_str::<P>(bytes).ok().and_then(|p| p.id) {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn publish_file_records(
    env: &Env,
    st: &mut SimState,
    ti: usize,
    records: &[files::FileRecord],
    per_blob: usize,
    at: DateTime<Utc>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for ct in ContentType::ALL {
        let of_ct: Vec<&files::FileRecord> =
            records.iter().filter(|r| r.content_type == ct).collect();
        for (n, chunk) in of_ct.chunks(per_blob.max(1)).enumerate() {
            let created = at + Duration::seconds(n as i64);
            let refs = chunk
                .iter()
                .map(|r| RecordRef::Lit {
                    id: r.id.as_str().into(),
                    bytes: r.bytes.as_str().into(),
                })
                .collect();
            let idx = st.add_blob(env, ti, ct, created, created, refs);
            ids.push(st.blobs[idx].content_id.clone());
        }
    }
    ids
}

fn add_scenario(env: &Env, st: &mut SimState, started_at: DateTime<Utc>) {
    let Some(spec) = &env.cfg.scenario else {
        return;
    };
    let ti = spec
        .tenant_id
        .as_deref()
        .and_then(|t| env.tenant_index(t))
        .unwrap_or(0);
    let start = started_at - Duration::minutes(spec.starts_minutes_ago);
    let recs = generator::intrusion(&env.ctxs[ti], spec, start, env.cfg.seed);
    for ct in ContentType::ALL {
        let of_ct: Vec<&generator::ScenarioRecord> =
            recs.iter().filter(|r| r.content_type == ct).collect();
        let Some(last) = of_ct.iter().map(|r| r.time).max() else {
            continue;
        };
        // Published a few minutes after the last event, as the audit pipeline would.
        let created = last + Duration::minutes(5);
        let refs = of_ct
            .iter()
            .map(|r| RecordRef::Lit {
                id: r.id.as_str().into(),
                bytes: r.bytes.as_str().into(),
            })
            .collect();
        st.add_blob(env, ti, ct, created, created, refs);
    }
    for r in recs {
        st.scenario.entry(r.step.to_owned()).or_default().push(r.id);
    }
}
