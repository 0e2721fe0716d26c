//! `m365-devo doctor --config FILE`: checks, against the real services, everything a run needs
//! and prints one line per check — `✔ name — detail` or `✘ name — what failed; what to do`.
//!
//! Checks, in order:
//! - per tenant: the Microsoft certificate credential's validity (certificate auth only); an
//!   access token from the authority; the roles it carries (`ActivityFeed.Read`, and
//!   `ActivityFeed.ReadDlp` when `DLP.All` is collected); the clock difference with the
//!   Management API (from its `Date` header; more than 5 minutes fails); the state of each
//!   configured subscription (disabled fails; not started yet passes, the producer starts it);
//! - Kafka: the brokers answer a metadata request, and every topic exists;
//! - Devo: the output is usable — for `devo_tls` a TLS handshake with the client certificate,
//!   made exactly as the forwarder makes it, and the client certificate's validity.
//!
//! Nothing secret is printed: errors come from the typed errors of the libraries, which carry
//! no secret, key or token, and the token itself is only looked at for its roles.
//!
//! Exit codes (see [`main`]): 0 every check passed, 1 at least one failed, 2 the configuration
//! is invalid (nothing was checked).

use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use m365_common::api::{AfCode, ApiError, http_client};
use m365_common::auth::{AccessToken, AuthError};
use m365_common::config::{self, Config, ContentType, Credential, Output, TenantSettings};
use m365_common::kafka::QuietContext;
use m365_common::runtime;
use m365_forwarder::output::{OutputError, OutputStats, StreamOutput, StreamSettings, TlsSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Largest clock difference with the Management API that passes.
pub const MAX_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// A certificate expiring sooner than this fails its check.
pub const CERT_FAIL_DAYS: i64 = 7;
/// A certificate expiring sooner than this passes with a reminder.
pub const CERT_WARN_DAYS: i64 = 30;
/// Limit of each network check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// Limit of the Kafka metadata request.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

const ROLE_READ: &str = "ActivityFeed.Read";
const ROLE_READ_DLP: &str = "ActivityFeed.ReadDlp";

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed, with what was found.
    Pass(String),
    /// Failed: what went wrong and what to do about it.
    Fail {
        /// What failed.
        problem: String,
        /// What the operator should do.
        fix: String,
    },
}

/// One check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name, e.g. `tenant contoso: token`.
    pub name: String,
    /// Result.
    pub outcome: Outcome,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Pass(detail.into()),
        }
    }

    fn fail(name: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Fail {
                problem: one_line(&problem.into()),
                fix: fix.into(),
            },
        }
    }

    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Pass(_))
    }
}

/// `text` on one line, without the trace lines Entra appends to its error descriptions.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !["Trace ID:", "Correlation ID:", "Timestamp:"]
                    .iter()
                    .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches('.')
        .to_owned()
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Pass(detail) => write!(f, "✔ {} — {detail}", self.name),
            Outcome::Fail { problem, fix } => {
                write!(f, "✘ {} — {problem}; {fix}", self.name)
            }
        }
    }
}

/// Entry point of the sub-command: load `config_path`, run every check, print each line as it
/// completes, then a summary. Exit 0 when all pass, 1 when any fails, 2 when the configuration
/// is invalid.
pub fn main(config_path: &Path) -> ExitCode {
    let cfg = match config::load(config_path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Cannot start the async runtime: {e}.");
            return ExitCode::from(1);
        }
    };
    println!("Checking {}", config_path.display());
    for w in &cfg.warnings {
        println!("warning: {w}");
    }
    let checks = rt.block_on(run(&cfg, |c| println!("{c}")));
    let failed = checks.iter().filter(|c| !c.passed()).count();
    if failed == 0 {
        println!("All {} checks passed.", checks.len());
        ExitCode::SUCCESS
    } else {
        println!("{failed} of {} checks failed.", checks.len());
        ExitCode::from(1)
    }
}

/// Runs every check for `cfg`, calling `report` with each result as soon as it is known.
pub async fn run(cfg: &Config, mut report: impl FnMut(&Check)) -> Vec<Check> {
    let mut all = Vec::new();
    let mut push = |c: Check, all: &mut Vec<Check>| {
        report(&c);
        all.push(c);
    };
    for tenant in cfg.tenants() {
        for c in tenant_checks(cfg, tenant).await {
            push(c, &mut all);
        }
    }
    for c in kafka_checks(&cfg.kafka).await {
        push(c, &mut all);
    }
    for c in devo_checks(cfg.devo.as_ref()).await {
        push(c, &mut all);
    }
    all
}

// ---------------------------------------------------------------------------------------------
// Tenants

async fn tenant_checks(cfg: &Config, t: &TenantSettings) -> Vec<Check> {
    let label = format!("tenant {}", t.name);
    let mut out = Vec::new();
    if let Credential::Certificate { cert_pem, .. } = &t.credential {
        out.push(cert_check(
            format!("{label}: app certificate"),
            cert_pem,
            Utc::now(),
            "upload a new certificate to the app (Entra > App registrations > Certificates & secrets) and point auth.cert_file/auth.key_file at it",
        ));
    }
    let api = match runtime::build_api_client(t, cfg.consumer.max_blob_bytes) {
        Ok(api) => api,
        Err(e) => {
            out.push(Check::fail(
                format!("{label}: token"),
                e.to_string(),
                "fix the tenant's auth settings (certificate, key, ca_file)",
            ));
            return out;
        }
    };

    let token = match tokio::time::timeout(CHECK_TIMEOUT, api.tokens().token()).await {
        Ok(Ok(token)) => {
            out.push(Check::pass(
                format!("{label}: token"),
                format!(
                    "issued by {} (expires {})",
                    api.tokens().endpoint_url(),
                    token.expires_at().format("%Y-%m-%d %H:%M UTC")
                ),
            ));
            Some(token)
        }
        Ok(Err(e)) => {
            out.push(Check::fail(
                format!("{label}: token"),
                e.to_string(),
                token_fix(&e, &t.endpoints.authority_base),
            ));
            None
        }
        Err(_) => {
            out.push(Check::fail(
                format!("{label}: token"),
                format!(
                    "no answer from {} within {} s",
                    api.tokens().endpoint_url(),
                    CHECK_TIMEOUT.as_secs()
                ),
                "check the network path (proxy, firewall, DNS) to the authority",
            ));
            None
        }
    };
    match &token {
        Some(token) => out.push(roles_check(&label, t, token)),
        None => out.push(Check::fail(
            format!("{label}: permissions"),
            "not checked: no access token",
            "fix the token check first",
        )),
    }

    out.push(clock_check(&label, t).await);

    if token.is_none() {
        out.push(Check::fail(
            format!("{label}: subscriptions"),
            "not checked: no access token",
            "fix the token check first",
        ));
        return out;
    }
    match tokio::time::timeout(CHECK_TIMEOUT, api.list_subscriptions()).await {
        Ok(Ok(subs)) => {
            for stream in &t.streams {
                let ct = stream.content_type.as_str();
                let name = format!("{label}: subscription {ct}");
                let found = subs
                    .iter()
                    .find(|s| s.content_type.eq_ignore_ascii_case(ct));
                out.push(match found {
                    Some(s) if s.is_enabled() => Check::pass(name, "enabled"),
                    Some(s) => Check::fail(
                        name,
                        format!("{}: a tenant administrator (or a stop call) turned it off, and content published while it is off can never be collected", s.status),
                        "find out who disabled it, then start it again (the producer does so on its next run, or POST subscriptions/start?contentType=…)",
                    ),
                    None => Check::pass(name, "not started yet; the producer starts it on its first run"),
                });
            }
        }
        Ok(Err(e)) => out.push(Check::fail(
            format!("{label}: subscriptions"),
            e.to_string(),
            api_fix(&e),
        )),
        Err(_) => out.push(Check::fail(
            format!("{label}: subscriptions"),
            format!(
                "no answer from the Management API within {} s",
                CHECK_TIMEOUT.as_secs()
            ),
            "check the network path to the API host",
        )),
    }
    out
}

/// What to do about a token failure.
fn token_fix(e: &AuthError, authority: &url::Url) -> String {
    let consent = "have an administrator of the tenant grant admin consent (`m365-devo onboard` prints the consent URL)";
    match e.aadsts() {
        Some(7000215) => "auth.client_secret is not the app's secret: use the secret's Value (not its Secret ID) from Entra > App registrations > Certificates & secrets".to_owned(),
        Some(7000222) => "the client secret has expired: create a new one under Certificates & secrets and update auth.client_secret".to_owned(),
        Some(700016) => format!("the app is not known in this tenant: check client_id and tenant_id, or {consent}"),
        Some(500011) => format!("the Office 365 Management APIs are not consented in this tenant, or the cloud is wrong: check `cloud`, or {consent}"),
        Some(90002) => "tenant_id is wrong or belongs to another cloud: copy the Tenant ID from Entra > Overview and check `cloud`".to_owned(),
        Some(700027) | Some(700024) => "the certificate is not registered on the app, or the key does not match it: upload auth.cert_file under Certificates & secrets".to_owned(),
        Some(code) => format!("see https://login.microsoftonline.com/error?code={code}"),
        None => match e {
            AuthError::Transport { .. } => format!(
                "check that {authority} is reachable from here (proxy, firewall, DNS) and that ca_file trusts it"
            ),
            AuthError::InvalidSettings { .. } | AuthError::Signing { .. } => {
                "fix the tenant's auth settings (certificate and key files)".to_owned()
            }
            _ => "check the authority URL (`cloud`) and try again".to_owned(),
        },
    }
}

/// What to do about a failed subscription listing.
fn api_fix(e: &ApiError) -> String {
    match e.af_code() {
        Some(AfCode::Af20011) => {
            "unified audit logging is off in this tenant: turn it on (Microsoft Purview > Audit > Start recording) and wait up to an hour".to_owned()
        }
        Some(AfCode::Af10001) => {
            "the token lacks ActivityFeed.Read: add the application permission and grant admin consent".to_owned()
        }
        Some(code) => format!(
            "the Management API answered {}; see the AF codes in the Management Activity API reference",
            code.as_str()
        ),
        None => "check that the API host (`cloud`) is reachable from here and that ca_file trusts it"
            .to_owned(),
    }
}

fn roles_check(label: &str, t: &TenantSettings, token: &AccessToken) -> Check {
    let name = format!("{label}: permissions");
    let roles = token.roles();
    let mut needed = vec![ROLE_READ];
    if t.stream(ContentType::DlpAll).is_some() {
        needed.push(ROLE_READ_DLP);
    }
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|r| !roles.iter().any(|have| have == r))
        .collect();
    let carried = if roles.is_empty() {
        "none".to_owned()
    } else {
        roles.join(", ")
    };
    if missing.is_empty() {
        return Check::pass(name, format!("roles {carried}"));
    }
    let mut fix = format!(
        "in Entra > App registrations > the app > API permissions add Office 365 Management APIs > Application permissions > {} and grant admin consent",
        missing.join(", ")
    );
    if missing == [ROLE_READ_DLP] {
        fix.push_str(" (or stop collecting DLP.All)");
    }
    Check::fail(
        name,
        format!(
            "the token lacks {} (it carries: {carried})",
            missing.join(" and ")
        ),
        fix,
    )
}

/// Compares this machine's clock with the Management API's `Date` header. The request needs
/// no token: even a `401` carries the header.
async fn clock_check(label: &str, t: &TenantSettings) -> Check {
    let name = format!("{label}: clock");
    let url = match t.endpoints.feed_base(&t.tenant_id) {
        Ok(base) => base.join("subscriptions/list").unwrap_or(base),
        Err(e) => {
            return Check::fail(
                name,
                format!("the API URL cannot be formed: {e}"),
                "fix `cloud.api_base`",
            );
        }
    };
    let http = match http_client(t.ca_pem.as_deref()) {
        Ok(h) => h,
        Err(e) => return Check::fail(name, e.to_string(), "fix ca_file"),
    };
    let sent_at = Utc::now();
    let started = Instant::now();
    let result = http
        .get(url.clone())
        .query(&[("PublisherIdentifier", t.publisher_identifier.as_str())])
        .timeout(CHECK_TIMEOUT)
        .send()
        .await;
    let res = match result {
        Ok(r) => r,
        Err(e) => {
            return Check::fail(
                name,
                format!(
                    "the Management API at {} did not answer: {e}",
                    url.origin().ascii_serialization()
                ),
                "check the network path (proxy, firewall, DNS) to the API host and that ca_file trusts it",
            );
        }
    };
    // The answer was made, on average, halfway through the round trip.
    let local = sent_at + chrono::TimeDelta::from_std(started.elapsed() / 2).unwrap_or_default();
    let Some(server) = res
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| DateTime::parse_from_rfc2822(v.trim()).ok())
        .map(|d| d.with_timezone(&Utc))
    else {
        return Check::fail(
            name,
            "the Management API's answer has no Date header",
            "check that `cloud.api_base` points at the Management Activity API, not a proxy page",
        );
    };
    // `Date` has whole seconds: its instant is on average half a second behind.
    let skew = server + chrono::TimeDelta::milliseconds(500) - local;
    clock_outcome(name, skew)
}

/// Pass or fail for a measured skew (server minus local).
fn clock_outcome(name: String, skew: chrono::TimeDelta) -> Check {
    let text = describe_skew(skew);
    if skew.abs() <= MAX_CLOCK_SKEW {
        Check::pass(name, format!("{text} the Management API's clock"))
    } else {
        Check::fail(
            name,
            format!(
                "this machine's clock is {text} the Management API's (limit ±{} min)",
                MAX_CLOCK_SKEW.num_minutes()
            ),
            "synchronise it with NTP (e.g. `timedatectl set-ntp true`, chrony or w32time); collection windows and token lifetimes depend on it",
        )
    }
}

fn describe_skew(skew: chrono::TimeDelta) -> String {
    let secs = ((skew.num_milliseconds().abs() + 500) / 1000) as u64;
    if secs < 2 {
        return "in step with".to_owned();
    }
    let amount = if secs >= 3600 {
        format!("{} h {} min", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{} min {} s", secs / 60, secs % 60)
    } else {
        format!("{secs} s")
    };
    // Server ahead of us: our clock is behind.
    if skew > chrono::TimeDelta::zero() {
        format!("{amount} behind")
    } else {
        format!("{amount} ahead of")
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka

async fn kafka_checks(k: &config::KafkaSettings) -> Vec<Check> {
    let Some(bootstrap) = k.bootstrap_servers.clone() else {
        return vec![Check::pass(
            "kafka",
            "no bootstrap_servers: the embedded in-process broker is used (it keeps nothing across restarts)",
        )];
    };
    let settings = runtime::kafka_settings(k, &bootstrap);
    let topics = settings.topics();
    let wanted: Vec<String> = topics
        .all()
        .iter()
        .filter(|(name, _)| *name != topics.txn_probe)
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let client_config = settings.client_config();
    let result = tokio::task::spawn_blocking(move || -> Result<(usize, Vec<String>), String> {
        let consumer: BaseConsumer<QuietContext> = client_config
            .create_with_context(QuietContext)
            .map_err(|e| format!("the Kafka client cannot be created: {e}"))?;
        let md = consumer
            .fetch_metadata(None, KAFKA_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let names = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name().to_owned())
            .collect();
        Ok((md.brokers().len(), names))
    })
    .await;
    let (brokers, present) = match result {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            return vec![Check::fail(
                "kafka",
                format!("no metadata from {bootstrap}: {e}"),
                "check kafka.bootstrap_servers, that the brokers run and are reachable from here (firewall, advertised.listeners), and the security.protocol/sasl.* properties",
            )];
        }
        Err(e) => {
            return vec![Check::fail(
                "kafka",
                format!("the metadata request stopped: {e}"),
                "try again; report it if it persists",
            )];
        }
    };
    let mut out = vec![Check::pass(
        "kafka",
        format!("{bootstrap} answers ({brokers} broker(s))"),
    )];
    let missing: Vec<&String> = wanted.iter().filter(|w| !present.contains(w)).collect();
    if missing.is_empty() {
        out.push(Check::pass("kafka topics", wanted.join(", ")));
    } else {
        let list = missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Check::fail(
            "kafka topics",
            format!("missing {list}"),
            format!(
                "start the producer once with rights to create topics (it creates them), or create them yourself, e.g. `kafka-topics.sh --create --topic {} --partitions {}` ({} with --config cleanup.policy=compact)",
                missing[0], k.partitions, topics.state
            ),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Devo

async fn devo_checks(devo: Option<&config::DevoSettings>) -> Vec<Check> {
    let Some(devo) = devo else {
        return vec![Check::fail(
            "devo",
            "no devo section: the forwarder has nowhere to send events",
            "add a devo section (type devo_tls with address, cert_file, key_file, chain_file)",
        )];
    };
    match &devo.output {
        Output::DevoTls {
            address,
            port,
            sni,
            tls,
        } => {
            let addr = socket_addr(address, *port);
            let settings =
                TlsSettings::new(sni.clone(), &tls.chain_file, &tls.cert_file, &tls.key_file);
            let name = "devo TLS handshake";
            let mut out = vec![match connect(&addr, Some(settings), devo.timeout()).await {
                Ok(()) => Check::pass(
                    name,
                    format!(
                        "{addr} (server name {sni}) accepted the client certificate {}",
                        tls.cert_file.display()
                    ),
                ),
                Err(e) => Check::fail(name, e.to_string(), devo_fix(&e, &tls.chain_file)),
            }];
            out.push(cert_check(
                format!("devo client certificate {}", tls.cert_file.display()),
                &tls.cert_pem,
                Utc::now(),
                "download a new certificate and key for the domain (Devo > Administration > Credentials > X.509) and update cert_file/key_file",
            ));
            out
        }
        Output::Tcp { address, port } => {
            let addr = socket_addr(address, *port);
            vec![match connect(&addr, None, devo.timeout()).await {
                Ok(()) => Check::pass("devo TCP relay", format!("{addr} accepts connections")),
                Err(e) => Check::fail(
                    "devo TCP relay",
                    e.to_string(),
                    "check devo.address/devo.port and that the relay runs",
                ),
            }]
        }
        Output::DevoHttp { endpoint, .. } => vec![Check::pass(
            "devo HTTP",
            format!(
                "{} (not probed: doctor checks TLS outputs only)",
                endpoint.origin().ascii_serialization()
            ),
        )],
        Output::File { path } => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if dir.is_dir() {
                vec![Check::pass(
                    "devo file output",
                    format!("{} (directory exists)", path.display()),
                )]
            } else {
                vec![Check::fail(
                    "devo file output",
                    format!("directory {} does not exist", dir.display()),
                    "create it or change devo.path",
                )]
            }
        }
        Output::Stdout => vec![Check::pass(
            "devo stdout output",
            "lines go to standard output",
        )],
    }
}

fn socket_addr(address: &str, port: u16) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Opens one connection as the forwarder would (same TLS settings, same handshake check).
async fn connect(
    addr: &str,
    tls: Option<TlsSettings>,
    timeout: Duration,
) -> Result<(), OutputError> {
    let mut settings = match tls {
        Some(t) => StreamSettings::with_tls(addr, t),
        None => StreamSettings::new(addr),
    };
    settings.connect_timeout = timeout.min(CHECK_TIMEOUT);
    let mut out = StreamOutput::new(settings, Arc::new(OutputStats::default()))?;
    let result = out.connect_now().await;
    if result.is_ok() {
        let _ = out.shutdown().await;
    }
    result
}

fn devo_fix(e: &OutputError, chain: &Path) -> String {
    match e {
        OutputError::ServerNotTrusted { .. } => format!(
            "chain_file {} does not hold the CA that signed the server's certificate: download the CA chain of your Devo domain and region (Administration > Credentials > X.509) and point chain_file at it",
            chain.display()
        ),
        OutputError::ServerNameMismatch { .. } => {
            "set devo.sni (or devo.address) to the name on the server's certificate, the collector host of your region".to_owned()
        }
        OutputError::ClientCertRejected { .. } => {
            "Devo refused the client certificate: use the certificate and key downloaded for this domain, and check that they have not expired".to_owned()
        }
        OutputError::Connect { .. } | OutputError::Timeout { .. } => {
            "check devo.address and devo.port, DNS, and that the firewall allows outbound TCP to it".to_owned()
        }
        OutputError::ReadFile { .. }
        | OutputError::BadCredentials { .. }
        | OutputError::TlsConfig(_)
        | OutputError::Unsupported(_) => {
            "fix devo.cert_file, devo.key_file and devo.chain_file (PEM files that belong together)".to_owned()
        }
        _ => "check the Devo address, port and certificates".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// Validity of the first certificate in `pem` at `now`.
fn cert_check(name: String, pem: &str, now: DateTime<Utc>, fix: &str) -> Check {
    let Some(cert_der) = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .find(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
    else {
        return Check::fail(name, "no PEM certificate found", fix);
    };
    let cert = match x509_parser::parse_x509_certificate(&cert_der) {
        Ok((_, cert)) => cert,
        Err(e) => return Check::fail(name, format!("the certificate cannot be parsed: {e}"), fix),
    };
    let subject = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(|cn| format!("CN={cn}"))
        .unwrap_or_else(|| cert.subject().to_string());
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let until = DateTime::<Utc>::from_timestamp(not_after, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| not_after.to_string());
    let now_ts = now.timestamp();
    if now_ts < not_before {
        return Check::fail(
            name,
            format!("{subject} is not valid before {}", validity.not_before),
            "check this machine's clock, or use a certificate that is already valid",
        );
    }
    let days_left = (not_after - now_ts).div_euclid(86_400);
    if not_after <= now_ts {
        Check::fail(name, format!("{subject} expired on {until}"), fix)
    } else if days_left < CERT_FAIL_DAYS {
        Check::fail(
            name,
            format!("{subject} expires on {until}, in {days_left} day(s)"),
            fix,
        )
    } else if days_left < CERT_WARN_DAYS {
        Check::pass(
            name,
            format!("{subject} valid until {until} — only {days_left} days left, renew it soon"),
        )
    } else {
        Check::pass(
            name,
            format!("{subject} valid until {until} ({days_left} days left)"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the two line shapes: a pass shows its detail, a failure its problem and its fix.
    #[test]
    fn check_lines() {
        assert_eq!(Check::pass("kafka", "ok").to_string(), "✔ kafka — ok");
        assert_eq!(
            Check::fail("kafka", "down", "start it").to_string(),
            "✘ kafka — down; start it"
        );
    }

    // Proves a multi-line Entra description becomes one line without its trace lines.
    #[test]
    fn failures_print_on_one_line() {
        let c = Check::fail(
            "t",
            "AADSTS7000215: Invalid client secret.\r\nTrace ID: abc\r\nCorrelation ID: def\r\nTimestamp: now",
            "fix it",
        );
        assert_eq!(
            c.to_string(),
            "✘ t — AADSTS7000215: Invalid client secret; fix it"
        );
    }

    // Proves skew within 5 minutes passes and beyond fails, with the direction named.
    #[test]
    fn clock_limits_and_direction() {
        let c = clock_outcome("c".into(), chrono::TimeDelta::seconds(299));
        assert!(c.passed());
        let c = clock_outcome("c".into(), chrono::TimeDelta::seconds(3600));
        assert!(!c.passed());
        assert!(c.to_string().contains("1 h 0 min behind"), "{c}");
        let c = clock_outcome("c".into(), chrono::TimeDelta::seconds(-400));
        assert!(c.to_string().contains("6 min 40 s ahead of"), "{c}");
    }

    // Proves certificate validity is judged against the given time: plenty left passes,
    // less than a week fails, expired fails.
    #[test]
    fn certificate_expiry() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["devo.test".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 3, 1);
        let pem = params.self_signed(&key).expect("cert").pem();
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
        let c = cert_check("c".into(), &pem, at("2026-01-10T00:00:00Z"), "renew");
        assert!(c.passed(), "{c}");
        let c = cert_check("c".into(), &pem, at("2026-02-25T00:00:00Z"), "renew");
        assert!(!c.passed() && c.to_string().contains("in 4 day(s)"), "{c}");
        let c = cert_check("c".into(), &pem, at("2026-03-02T00:00:00Z"), "renew");
        assert!(
            c.to_string().contains("expired on 2026-03-01; renew"),
            "{c}"
        );
        let c = cert_check("c".into(), "not pem", at("2026-01-10T00:00:00Z"), "renew");
        assert!(!c.passed());
    }
}
