//! `m365-sim`: run the fake Microsoft 365 tenant from the command line (demo, scripts,
//! benchmarks). Prints one JSON "ready" line on stdout (base URL, port, token URLs, cert
//! paths) once it serves, then runs until Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser};
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
    #[command(flatten)]
    devo: DevoArgs,
}

/// Fake-Devo options.
// TODO(lead): fake-Devo flags go here (listener address, TLS, output dir, ...); this crate's
// tenant part does not implement Devo. See `start_devo` below.
#[derive(Args, Debug, Default)]
struct DevoArgs {}

/// Start the fake Devo next to the tenant and add its facts to the ready line.
// TODO(lead): implement with `m365_sim::devo` once its API is settled.
async fn start_devo(
    _args: &DevoArgs,
    _ready: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    Ok(())
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
    start_devo(&cli.devo, &mut ready).await?;
    println!("{}", serde_json::Value::Object(ready));
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    sim.shutdown().await;
    Ok(())
}
