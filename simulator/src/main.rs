//! `m365-sim`: run the fake Microsoft 365 tenant from the command line (demo, scripts,
//! benchmarks), optionally with a fake Devo next to it (`--devo`). Prints one JSON "ready"
//! line on stdout (base URL, port, token URLs, cert paths, and under `"devo"` the fake Devo's
//! addresses, output directory and certificate paths) once it serves, then runs until
//! SIGINT (Ctrl-C) or SIGTERM, shuts down cleanly (flushing `--devo-out` files) and prints a
//! JSON "stopped" line. With `--control` it also serves the runtime control API
//! ([`m365_sim::control`]) at `control_url`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser};
use m365_sim::control::{ControlServer, ControlState};
use m365_sim::devo::{FakeDevo, FakeDevoConfig};
use m365_sim::tenant::{
    AppSpec, FaultSpec, Intrusion, RecordFileSpec, SimConfig, Simulator, TEST_CLIENT_ID,
    TEST_CLIENT_SECRET, TenantSpec, ThrottleSpec,
};

/// A faithful fake Microsoft 365 tenant (Entra token endpoints + Management Activity API).
#[derive(Parser, Debug)]
#[command(name = "m365-sim", version)]
struct Cli {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1", env = "M365_SIM_BIND")]
    bind: IpAddr,
    /// Port (0 = any free port).
    #[arg(long, default_value_t = 0, env = "M365_SIM_PORT")]
    port: u16,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    no_tls: bool,
    /// Tenant GUIDs (repeat or comma-separate).
    #[arg(
        long = "tenant",
        value_delimiter = ',',
        default_value = "11111111-2222-3333-4444-555555555555"
    )]
    tenants: Vec<String>,
    /// Client (application) id registered in every tenant.
    #[arg(long, default_value = TEST_CLIENT_ID)]
    client_id: String,
    /// Client secret of that app.
    #[arg(long, env = "M365_SIM_CLIENT_SECRET", default_value = TEST_CLIENT_SECRET, hide_default_value = true)]
    client_secret: String,
    /// PEM certificate registered on the app for client assertions.
    #[arg(long)]
    client_cert: Option<PathBuf>,
    /// Subscriptions start enabled for every content type.
    #[arg(long)]
    subscribed: bool,
    /// Generated records per minute per tenant.
    #[arg(long, default_value_t = 60.0)]
    records_per_minute: f64,
    /// Hours of past content present at start.
    #[arg(long, default_value_t = 48.0)]
    history_hours: f64,
    /// Seconds between blobs per content type.
    #[arg(long, default_value_t = 60)]
    blob_interval_secs: u64,
    /// Items per listing page.
    #[arg(long, default_value_t = 100)]
    page_size: usize,
    /// Seed of all random choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Requests per minute per tenant (0 = unlimited).
    #[arg(long, default_value_t = 2000)]
    tenant_rate_per_minute: u32,
    /// Fraction of API requests answered AF429.
    #[arg(long, default_value_t = 0.0)]
    throttle_fraction: f64,
    /// HTTP status of AF429 answers (403 or 429).
    #[arg(long, default_value_t = 403)]
    throttle_status: u16,
    /// Retry-After seconds on AF429 answers.
    #[arg(long)]
    retry_after_secs: Option<u64>,
    /// Fraction of API requests answered 500 AF50000.
    #[arg(long, default_value_t = 0.0)]
    error_500_fraction: f64,
    /// Fraction answered 503.
    #[arg(long, default_value_t = 0.0)]
    error_503_fraction: f64,
    /// Fraction answered with an HTML 502 page.
    #[arg(long, default_value_t = 0.0)]
    html_error_fraction: f64,
    /// Fraction of blob downloads truncated.
    #[arg(long, default_value_t = 0.0)]
    truncated_blob_fraction: f64,
    /// Fraction of generated blobs listed late.
    #[arg(long, default_value_t = 0.0)]
    late_blob_fraction: f64,
    /// How late, in seconds.
    #[arg(long, default_value_t = 1800)]
    late_blob_delay_secs: u64,
    /// Fraction of generated blobs repeating a record of the previous blob.
    #[arg(long, default_value_t = 0.0)]
    duplicate_record_fraction: f64,
    /// Server clock offset in seconds (Date header, windows, tokens).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_skew_secs: i64,
    /// Answer >24h windows with partial results instead of AF20030.
    #[arg(long)]
    lenient_window: bool,
    /// Mix the intrusion scenario into the first tenant.
    #[arg(long)]
    intrusion: bool,
    /// Serve real records from these files (JSON lines or arrays).
    #[arg(long = "records-file")]
    records_files: Vec<PathBuf>,
    /// Write ca.pem, server.pem, ... here (TLS mode).
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3599, value_parser = clap::value_parser!(u64).range(1..))]
    token_lifetime_secs: u64,
    /// Fraction of listed blobs that expire right after the listing (expiry race).
    #[arg(long, default_value_t = 0.0)]
    expiry_race_fraction: f64,
    /// Serve the runtime control API (faults, token expiry, fake Devo stop/resume, truth)
    /// over plain HTTP on the `--bind` address; its URL is `control_url` in the ready line.
    #[arg(long)]
    control: bool,
    /// Port of the control API (0 = any free port).
    #[arg(long, default_value_t = 0, requires = "control")]
    control_port: u16,
    #[command(flatten)]
    devo: DevoArgs,
}

/// Fake-Devo options (all but `--devo` require `--devo`).
#[derive(Args, Debug, Default)]
struct DevoArgs {
    /// Also run a fake Devo on the `--bind` address: mutual-TLS syslog, plain TCP syslog and
    /// the HTTP ingestion API.
    #[arg(long = "devo")]
    devo: bool,
    /// Port of the mutual-TLS syslog listener (0 = any free port).
    #[arg(
        long = "devo-tls-port",
        id = "devo_tls_port",
        default_value_t = 0,
        requires = "devo"
    )]
    tls_port: u16,
    /// Port of the plain TCP syslog listener (0 = any free port).
    #[arg(
        long = "devo-tcp-port",
        id = "devo_tcp_port",
        default_value_t = 0,
        requires = "devo"
    )]
    tcp_port: u16,
    /// Do not open the plain TCP syslog listener.
    #[arg(
        long = "devo-no-tcp",
        id = "devo_no_tcp",
        requires = "devo",
        conflicts_with = "devo_tcp_port"
    )]
    no_tcp: bool,
    /// Port of the HTTP ingestion listener (0 = any free port).
    #[arg(
        long = "devo-http-port",
        id = "devo_http_port",
        default_value_t = 0,
        requires = "devo"
    )]
    http_port: u16,
    /// Do not open the HTTP ingestion listener.
    #[arg(
        long = "devo-no-http",
        id = "devo_no_http",
        requires = "devo",
        conflicts_with = "devo_http_port"
    )]
    no_http: bool,
    /// Token the HTTP ingestion API expects in its `token!<token>` path segment
    /// (default: the fake's built-in test token).
    #[arg(
        long = "devo-http-token",
        id = "devo_http_token",
        env = "M365_SIM_DEVO_HTTP_TOKEN"
    )]
    http_token: Option<String>,
    /// Accept TLS syslog clients that present no client certificate (Devo requires one).
    #[arg(
        long = "devo-no-client-auth",
        id = "devo_no_client_auth",
        requires = "devo"
    )]
    no_client_auth: bool,
    /// Append every received event to `DIR/<tag>.log`.
    #[arg(
        long = "devo-out",
        id = "devo_out",
        value_name = "DIR",
        requires = "devo"
    )]
    out_dir: Option<PathBuf>,
    /// Write the fake Devo's ca.pem, server.pem/.key and client.pem/.key here, for a
    /// forwarder's TLS output (default with `--cert-dir`: `<cert-dir>/devo`).
    #[arg(
        long = "devo-cert-dir",
        id = "devo_cert_dir",
        value_name = "DIR",
        requires = "devo"
    )]
    cert_dir: Option<PathBuf>,
}

impl DevoArgs {
    /// The fake-Devo configuration these flags describe.
    fn fake_devo_config(&self, bind: IpAddr) -> anyhow::Result<FakeDevoConfig> {
        let defaults = FakeDevoConfig::default();
        let http_token = match &self.http_token {
            Some(token) => {
                let usable = !token.is_empty()
                    && token
                        .chars()
                        .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | '?' | '#' | '%'));
                if !usable {
                    anyhow::bail!(
                        "--devo-http-token must be non-empty printable ASCII without '/', '?', '#' or '%' (it is a URL path segment)"
                    );
                }
                token.clone()
            }
            None => defaults.http_token.clone(),
        };
        Ok(FakeDevoConfig {
            bind,
            tls_port: self.tls_port,
            tcp_port: (!self.no_tcp).then_some(self.tcp_port),
            http_port: (!self.no_http).then_some(self.http_port),
            http_token,
            pki: None,
            require_client_cert: !self.no_client_auth,
            out_dir: self.out_dir.clone(),
            // A long-running fake only needs the files and the counters; keeping every line
            // and raw byte in memory would grow without bound.
            keep_lines: false,
            keep_raw: false,
            ..defaults
        })
    }
}

/// Where the fake Devo's certificates go: `--devo-cert-dir`, else `<cert-dir>/devo`.
fn devo_cert_dir(
    args: &DevoArgs,
    tenant_cert_dir: Option<&Path>,
) -> anyhow::Result<Option<PathBuf>> {
    let dir = match (&args.cert_dir, tenant_cert_dir) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(t)) => Some(t.join("devo")),
        (None, None) => None,
    };
    if let (Some(d), Some(t)) = (&dir, tenant_cert_dir)
        && d == t
    {
        anyhow::bail!(
            "--devo-cert-dir must differ from --cert-dir: both write ca.pem, server.pem, client.pem, ..."
        );
    }
    Ok(dir)
}

/// Starts the fake Devo next to the tenant (when `--devo` is given) and adds its addresses,
/// output directory and certificate paths to the ready line under `"devo"`.
async fn start_devo(
    args: &DevoArgs,
    bind: IpAddr,
    tenant_cert_dir: Option<&Path>,
    ready: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<Option<FakeDevo>> {
    if !args.devo {
        return Ok(None);
    }
    let cert_dir = devo_cert_dir(args, tenant_cert_dir)?;
    let devo = FakeDevo::start(args.fake_devo_config(bind)?)
        .await
        .context("starting the fake Devo")?;
    let mut facts = serde_json::Map::new();
    facts.insert("tls_addr".into(), devo.tls_addr().to_string().into());
    facts.insert("tls_port".into(), devo.tls_addr().port().into());
    facts.insert("client_cert_required".into(), (!args.no_client_auth).into());
    facts.insert(
        "tcp_addr".into(),
        devo.tcp_addr().map(|a| a.to_string()).into(),
    );
    facts.insert("tcp_port".into(), devo.tcp_addr().map(|a| a.port()).into());
    facts.insert("http_url".into(), devo.http_base_url().into());
    facts.insert(
        "http_port".into(),
        devo.http_addr().map(|a| a.port()).into(),
    );
    facts.insert(
        "out_dir".into(),
        devo.out_dir().map(|d| d.display().to_string()).into(),
    );
    if let Some(dir) = cert_dir {
        let paths = devo
            .pki()
            .write_to(&dir)
            .with_context(|| format!("writing the fake Devo certificates to {}", dir.display()))?;
        for (key, path) in [
            ("cert_dir", &paths.dir),
            ("ca_pem", &paths.ca),
            ("server_cert", &paths.server_cert),
            ("server_key", &paths.server_key),
            ("client_cert", &paths.client_cert),
            ("client_key", &paths.client_key),
        ] {
            facts.insert(key.into(), path.display().to_string().into());
        }
    }
    ready.insert("devo".into(), facts.into());
    Ok(Some(devo))
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM and names the signal. The handlers are installed
/// when this is called, so call it before announcing readiness.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}

/// Waits for Ctrl-C (non-Unix platforms have no SIGTERM).
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    Ok(async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "Cannot wait for Ctrl-C; stopping.");
        }
        "Ctrl-C"
    })
}

fn config(cli: &Cli) -> anyhow::Result<SimConfig> {
    let cert_pem = match &cli.client_cert {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let tenants = cli
        .tenants
        .iter()
        .map(|t| {
            let mut spec = TenantSpec::new(t);
            let mut app = AppSpec::with_secret(&cli.client_id, &cli.client_secret);
            app.cert_pem = cert_pem.clone();
            spec.apps = vec![app];
            if cli.subscribed {
                spec.subscribed = m365_sim::tenant::ContentType::ALL.to_vec();
            }
            spec
        })
        .collect();
    Ok(SimConfig {
        bind: SocketAddr::new(cli.bind, cli.port),
        tls: !cli.no_tls,
        tenants,
        page_size: cli.page_size,
        history_hours: cli.history_hours,
        records_per_minute: cli.records_per_minute,
        blob_interval_secs: cli.blob_interval_secs,
        seed: cli.seed,
        clock_skew_secs: cli.clock_skew_secs,
        token_lifetime_secs: cli.token_lifetime_secs,
        strict_window: !cli.lenient_window,
        throttle: ThrottleSpec {
            tenant_per_minute: cli.tenant_rate_per_minute,
            status: cli.throttle_status,
            retry_after_secs: cli.retry_after_secs,
            ..ThrottleSpec::default()
        },
        faults: FaultSpec {
            throttle_fraction: cli.throttle_fraction,
            error_500_fraction: cli.error_500_fraction,
            error_503_fraction: cli.error_503_fraction,
            html_error_fraction: cli.html_error_fraction,
            truncated_blob_fraction: cli.truncated_blob_fraction,
            late_blob_fraction: cli.late_blob_fraction,
            late_blob_delay_secs: cli.late_blob_delay_secs,
            duplicate_record_fraction: cli.duplicate_record_fraction,
            expiry_race_fraction: cli.expiry_race_fraction,
            ..FaultSpec::default()
        },
        scenario: cli.intrusion.then(Intrusion::default),
        record_files: cli.records_files.iter().map(RecordFileSpec::new).collect(),
        ..SimConfig::default()
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let sim = Simulator::start(config(&cli)?)
        .await
        .context("starting the simulator")?;
    let mut ready = serde_json::Map::new();
    ready.insert("event".into(), "ready".into());
    ready.insert("base_url".into(), sim.base_url().as_str().into());
    ready.insert("port".into(), sim.local_addr().port().into());
    ready.insert("tls".into(), (!cli.no_tls).into());
    ready.insert("client_id".into(), cli.client_id.clone().into());
    ready.insert("resource".into(), sim.resource().into());
    let tenants: Vec<serde_json::Value> = cli
        .tenants
        .iter()
        .map(|t| {
            serde_json::json!({"tenant_id": t, "token_url_v2": sim.token_url(t, true).as_str(),
                "token_url_v1": sim.token_url(t, false).as_str(), "api_root": sim.api_root(t).as_str()})
        })
        .collect();
    ready.insert("tenants".into(), tenants.into());
    if let (Some(dir), Some(pki)) = (&cli.cert_dir, sim.pki()) {
        let paths = pki
            .write_to(dir)
            .with_context(|| format!("writing certificates to {}", dir.display()))?;
        ready.insert("ca_pem".into(), paths.ca.display().to_string().into());
        ready.insert(
            "server_cert".into(),
            paths.server_cert.display().to_string().into(),
        );
        ready.insert(
            "client_cert".into(),
            paths.client_cert.display().to_string().into(),
        );
        ready.insert(
            "client_key".into(),
            paths.client_key.display().to_string().into(),
        );
    }
    let devo = start_devo(&cli.devo, cli.bind, cli.cert_dir.as_deref(), &mut ready)
        .await?
        .map(Arc::new);
    let control = if cli.control {
        let state = ControlState::new(sim.handle(), devo.clone());
        let server = ControlServer::start(SocketAddr::new(cli.bind, cli.control_port), state)
            .await
            .context("starting the control API")?;
        ready.insert("control_url".into(), server.url().into());
        Some(server)
    } else {
        None
    };
    let stop = shutdown_signal()?;
    println!("{}", serde_json::Value::Object(ready));
    let signal = stop.await;
    tracing::info!(signal, "Stopping.");
    let mut stopped = serde_json::Map::new();
    stopped.insert("event".into(), "stopped".into());
    stopped.insert("signal".into(), signal.into());
    if let Some(control) = control {
        control.shutdown().await;
    }
    if let Some(devo) = devo {
        // `shutdown` consumes the fake (and flushes the out-dir files): count first.
        let stats = devo.stats();
        match Arc::try_unwrap(devo) {
            Ok(devo) => devo.shutdown().await,
            // A control task still holds it: flush what was received; dropping stops it.
            Err(shared) => shared.flush_persisted().await,
        }
        stopped.insert("devo_lines_received".into(), stats.lines_received.into());
        stopped.insert(
            "devo_handshake_failures".into(),
            stats.handshake_failures.into(),
        );
    }
    sim.shutdown().await;
    println!("{}", serde_json::Value::Object(stopped));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    // Proves the flag definitions are consistent (unique ids, valid requires/conflicts).
    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    // Proves the Devo flags map onto the fake's configuration and need `--devo`.
    #[test]
    fn devo_flags_map_to_config() {
        let cli = Cli::try_parse_from([
            "m365-sim",
            "--devo",
            "--devo-tls-port",
            "6514",
            "--devo-no-tcp",
            "--devo-http-token",
            "abc123",
            "--devo-out",
            "/tmp/devo-out",
        ])
        .expect("valid flags");
        let cfg = cli
            .devo
            .fake_devo_config(IpAddr::from([127, 0, 0, 1]))
            .expect("config");
        assert_eq!(cfg.tls_port, 6514);
        assert_eq!(cfg.tcp_port, None);
        assert_eq!(cfg.http_port, Some(0));
        assert_eq!(cfg.http_token, "abc123");
        assert!(cfg.require_client_cert);
        assert_eq!(cfg.out_dir, Some(PathBuf::from("/tmp/devo-out")));
        assert!(Cli::try_parse_from(["m365-sim", "--devo-out", "/tmp/x"]).is_err());
        let bad = Cli::try_parse_from(["m365-sim", "--devo", "--devo-http-token", "a/b"])
            .expect("parses");
        assert!(
            bad.devo
                .fake_devo_config(IpAddr::from([127, 0, 0, 1]))
                .is_err()
        );
    }

    // Proves the Devo certificates default under `--cert-dir` and may not overwrite it.
    #[test]
    fn devo_cert_dir_defaults_and_clash() {
        let args = DevoArgs::default();
        let tenant = Path::new("/tmp/certs");
        assert_eq!(
            devo_cert_dir(&args, Some(tenant)).expect("ok"),
            Some(tenant.join("devo"))
        );
        assert_eq!(devo_cert_dir(&args, None).expect("ok"), None);
        let clash = DevoArgs {
            cert_dir: Some(tenant.to_path_buf()),
            ..DevoArgs::default()
        };
        assert!(devo_cert_dir(&clash, Some(tenant)).is_err());
    }
}
