//! `m365-devo onboard`: the admin-consent flow that lets a multi-tenant app read a customer
//! tenant's audit logs (management-activity-api.md §3.1), ending with the `tenants[]` block to
//! add to the configuration.
//!
//! 1. Print the tenant-administrator consent URL of the chosen cloud:
//!    `{authority}/common/oauth2/authorize?response_type=code&client_id=…&redirect_uri=…&resource=…&prompt=admin_consent&state=…`
//!    (or the v2 form with `scope={resource}/.default`).
//! 2. With `--listen`, serve the redirect URI on this machine (loopback `http` only), wait for
//!    the browser to come back with `?code=…&state=…` (the state must match), exchange the code
//!    at `{authority}/common/oauth2/token` with the app's secret, read the tenant id (`tid`) and
//!    roles from the token, and print the tenant block. `--code` does the same with a code
//!    copied from the browser's address bar instead of listening.
//!
//! The client secret is read from an environment variable or a file, never from the command
//! line, and the printed block refers to it the same way; neither the secret, the code nor the
//! token is ever printed.
//!
//! Exit codes: 0 done, 1 the consent or the exchange failed (or timed out), 2 invalid
//! arguments.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use m365_common::api::http_client;
use m365_common::cloud::{CloudEndpoints, CloudPreset};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use url::Url;

/// Largest request head the redirect listener reads.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// How long one browser connection may take to send its request.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit of the code exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Arguments of `m365-devo onboard`.
#[derive(clap::Args, Debug)]
pub struct OnboardArgs {
    /// Application (client) id of the multi-tenant app, a GUID.
    #[arg(long)]
    pub client_id: String,
    /// Microsoft cloud: commercial, gcc, gcc_high or dod. Ignored with --authority-base.
    #[arg(long, default_value = "commercial")]
    pub cloud: String,
    /// Explicit authority base URL instead of a cloud (e.g. a local simulator).
    #[arg(long, requires = "api_base")]
    pub authority_base: Option<Url>,
    /// Explicit Management API base URL (goes with --authority-base).
    #[arg(long, requires = "authority_base")]
    pub api_base: Option<Url>,
    /// Resource (token audience) with --authority-base; default: the API base's origin.
    #[arg(long, requires = "authority_base")]
    pub resource: Option<String>,
    /// Redirect URI registered on the app (Authentication > Web). With --listen it must be
    /// `http://localhost…`, `http://127.0.0.1…` or `http://[::1]…`; port 0 picks a free port.
    #[arg(long, default_value = "http://localhost:8400/")]
    pub redirect_uri: Url,
    /// Serve the redirect URI here, receive the code, exchange it and print the tenant block.
    #[arg(long, conflicts_with = "code")]
    pub listen: bool,
    /// Exchange this authorization code (copied from the browser) instead of listening.
    #[arg(long)]
    pub code: Option<String>,
    /// Use the v2 endpoints (`/oauth2/v2.0/authorize` with `scope`) instead of v1.
    #[arg(long)]
    pub v2: bool,
    /// Environment variable holding the app's client secret (for the exchange).
    #[arg(long, default_value = "M365_CLIENT_SECRET")]
    pub client_secret_env: String,
    /// File holding the app's client secret, instead of the environment variable.
    #[arg(long)]
    pub client_secret_file: Option<PathBuf>,
    /// Extra trusted root certificate (PEM) for the authority, e.g. a local simulator's CA.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Label of the tenant in the printed block (`name`).
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds to wait for the redirect with --listen.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// Why onboarding failed.
#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    /// The arguments cannot work (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The redirect URI could not be served.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// No usable redirect arrived in time.
    #[error("no consent redirect arrived within {0} s")]
    Timeout(u64),
    /// The authority redirected back with an error.
    #[error("consent was not granted: {error}: {description}")]
    Denied {
        /// OAuth `error`.
        error: String,
        /// `error_description`.
        description: String,
    },
    /// The token endpoint refused the code.
    #[error("the token endpoint {url} refused the code: HTTP {status} {error}: {description}")]
    Refused {
        /// Token URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// OAuth `error`.
        error: String,
        /// `error_description`.
        description: String,
    },
    /// The token endpoint could not be reached.
    #[error("the token endpoint {url} did not answer: {detail}")]
    Transport {
        /// Token URL.
        url: String,
        /// What happened (no credentials: they travel in the body).
        detail: String,
    },
    /// The answer carries no usable token.
    #[error("the token endpoint's answer is unusable: {0}")]
    BadAnswer(String),
}

impl OnboardError {
    fn exit_code(&self) -> ExitCode {
        match self {
            OnboardError::Usage(_) => ExitCode::from(2),
            _ => ExitCode::from(1),
        }
    }
}

/// Entry point of the sub-command; see the module documentation for the exit codes.
pub fn main(args: OnboardArgs) -> ExitCode {
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
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Where the secret comes from, as it will be written in the tenant block.
enum SecretRef {
    Env(String),
    File(PathBuf),
}

/// Everything resolved from the arguments before any network use.
struct Plan {
    client_id: String,
    endpoints: CloudEndpoints,
    preset: Option<CloudPreset>,
    v2: bool,
    ca_file: Option<PathBuf>,
    ca_pem: Option<String>,
    name: Option<String>,
}

async fn run(args: OnboardArgs) -> Result<(), OnboardError> {
    let plan = plan(&args)?;
    let needs_secret = args.listen || args.code.is_some();
    let secret = if needs_secret {
        Some(read_secret(&args)?)
    } else {
        None
    };

    let mut redirect_uri = args.redirect_uri.clone();
    let listener = if args.listen {
        let (listener, bound) = bind_redirect(&redirect_uri).await?;
        if redirect_uri.port() == Some(0) {
            // Port 0 asked for a free port: the URL must name the one we got.
            let _ = redirect_uri.set_port(Some(bound.port()));
        }
        Some(listener)
    } else {
        None
    };

    let state = uuid::Uuid::new_v4().simple().to_string();
    let consent_url = consent_url(&plan, &redirect_uri, &state)?;
    println!(
        "Open this URL as a Global Administrator (or Privileged Role Administrator) of the customer tenant and accept:"
    );
    println!();
    println!("{consent_url}");
    println!();

    let code = match (listener, &args.code) {
        (Some(listener), _) => {
            eprintln!(
                "Waiting up to {} s for the browser to come back to {redirect_uri} …",
                args.timeout_secs
            );
            let wait = receive_code(listener, redirect_uri.path().to_owned(), state);
            match tokio::time::timeout(Duration::from_secs(args.timeout_secs), wait).await {
                Ok(r) => r?,
                Err(_) => return Err(OnboardError::Timeout(args.timeout_secs)),
            }
        }
        (None, Some(code)) => code.trim().to_owned(),
        (None, None) => {
            println!(
                "The app must have {redirect_uri} as a Web redirect URI. After consent, either run this command with --listen, \
                 or with --code CODE (the `code` parameter of the address the browser lands on), to print the tenant block."
            );
            return Ok(());
        }
    };
    let Some((secret, secret_ref)) = secret else {
        return Err(OnboardError::Usage(
            "a client secret is needed for the exchange".to_owned(),
        ));
    };
    let claims = exchange(&plan, &redirect_uri, &code, &secret).await?;
    let tid = claims
        .get("tid")
        .and_then(Value::as_str)
        .filter(|t| uuid::Uuid::parse_str(t).is_ok())
        .ok_or_else(|| OnboardError::BadAnswer("the token carries no tenant id (tid)".to_owned()))?
        .to_ascii_lowercase();
    let roles: Vec<&str> = claims
        .get("roles")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "Consent granted in tenant {tid}. Roles the app holds there: {}.",
        if roles.is_empty() {
            "none".to_owned()
        } else {
            roles.join(", ")
        }
    );
    if !roles.contains(&"ActivityFeed.Read") {
        println!(
            "Note: ActivityFeed.Read is missing: add it (Office 365 Management APIs, application permission) and consent again."
        );
    }
    println!("Add this block to `tenants` in the configuration:");
    println!();
    let block = tenant_block(&plan, &tid, &secret_ref);
    println!(
        "{}",
        serde_json::to_string_pretty(&block).unwrap_or_else(|_| block.to_string())
    );
    Ok(())
}

fn plan(args: &OnboardArgs) -> Result<Plan, OnboardError> {
    let client_id = uuid::Uuid::parse_str(args.client_id.trim())
        .map_err(|_| {
            OnboardError::Usage(format!(
                "--client-id: expected the app's Application (client) ID, a GUID such as 6f0c5a2e-3b7d-4c1e-9a8f-2d4b6c8e0a13, got {:?}",
                args.client_id
            ))
        })?
        .hyphenated()
        .to_string();
    let (endpoints, preset) = match (&args.authority_base, &args.api_base) {
        (Some(authority_base), Some(api_base)) => {
            let resource = args
                .resource
                .clone()
                .unwrap_or_else(|| api_base.origin().ascii_serialization());
            (
                CloudEndpoints {
                    api_base: api_base.clone(),
                    authority_base: authority_base.clone(),
                    resource,
                },
                None,
            )
        }
        _ => {
            let preset = CloudPreset::from_name(&args.cloud).ok_or_else(|| {
                OnboardError::Usage(format!(
                    "--cloud: expected commercial, gcc, gcc_high or dod, got {:?}",
                    args.cloud
                ))
            })?;
            (preset.endpoints(), Some(preset))
        }
    };
    let (ca_file, ca_pem) = match &args.ca_file {
        Some(p) => {
            let pem = std::fs::read_to_string(p).map_err(|e| {
                OnboardError::Usage(format!("--ca-file {}: cannot read it: {e}", p.display()))
            })?;
            (
                Some(std::path::absolute(p).unwrap_or_else(|_| p.clone())),
                Some(pem),
            )
        }
        None => (None, None),
    };
    if !matches!(args.redirect_uri.scheme(), "http" | "https") {
        return Err(OnboardError::Usage(format!(
            "--redirect-uri: expected an http(s) URL, got {}",
            args.redirect_uri
        )));
    }
    if args.listen {
        listen_ip(&args.redirect_uri)?;
    }
    Ok(Plan {
        client_id,
        endpoints,
        preset,
        v2: args.v2,
        ca_file,
        ca_pem,
        name: args.name.clone(),
    })
}

fn read_secret(args: &OnboardArgs) -> Result<(SecretString, SecretRef), OnboardError> {
    let (value, source) = match &args.client_secret_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                OnboardError::Usage(format!(
                    "--client-secret-file {}: cannot read it: {e}",
                    path.display()
                ))
            })?;
            let abs = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            (text, SecretRef::File(abs))
        }
        None => {
            let var = &args.client_secret_env;
            let text = std::env::var(var).map_err(|_| {
                OnboardError::Usage(format!(
                    "the client secret is needed to exchange the code: set the environment variable {var} (or pass --client-secret-file)"
                ))
            })?;
            (text, SecretRef::Env(var.clone()))
        }
    };
    let trimmed = value.trim_end_matches(['\r', '\n']);
    if trimmed.is_empty() {
        return Err(OnboardError::Usage("the client secret is empty".to_owned()));
    }
    Ok((SecretString::from(trimmed.to_owned()), source))
}

fn authority(plan: &Plan) -> String {
    plan.endpoints
        .authority_base
        .as_str()
        .trim_end_matches('/')
        .to_owned()
}

/// The tenant-admin consent URL.
fn consent_url(plan: &Plan, redirect_uri: &Url, state: &str) -> Result<Url, OnboardError> {
    let path = if plan.v2 {
        "common/oauth2/v2.0/authorize"
    } else {
        "common/oauth2/authorize"
    };
    let mut url = Url::parse(&format!("{}/{path}", authority(plan)))
        .map_err(|e| OnboardError::Usage(format!("--authority-base: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &plan.client_id)
            .append_pair("redirect_uri", redirect_uri.as_str());
        if plan.v2 {
            q.append_pair("scope", &plan.endpoints.scope())
                .append_pair("response_mode", "query")
                .append_pair("prompt", "consent");
        } else {
            q.append_pair("resource", &plan.endpoints.resource)
                .append_pair("prompt", "admin_consent");
        }
        q.append_pair("state", state);
    }
    Ok(url)
}

/// The loopback address `--listen` serves the redirect URI on.
fn listen_ip(redirect_uri: &Url) -> Result<IpAddr, OnboardError> {
    let ip = match redirect_uri.host() {
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
        Some(url::Host::Ipv4(ip)) if ip.is_loopback() => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) if ip == Ipv6Addr::LOCALHOST => IpAddr::V6(ip),
        _ => {
            return Err(OnboardError::Usage(format!(
                "--listen serves the redirect URI on this machine: use http://localhost:PORT/…, http://127.0.0.1:PORT/… or http://[::1]:PORT/…, not {redirect_uri}"
            )));
        }
    };
    if redirect_uri.scheme() != "http" {
        return Err(OnboardError::Usage(format!(
            "--listen serves plain http on the loopback interface; use http:// in --redirect-uri, not {redirect_uri}"
        )));
    }
    Ok(ip)
}

/// Binds the redirect URI's loopback address.
async fn bind_redirect(redirect_uri: &Url) -> Result<(TcpListener, SocketAddr), OnboardError> {
    let ip = listen_ip(redirect_uri)?;
    let port = redirect_uri.port_or_known_default().unwrap_or(80);
    let addr = SocketAddr::new(ip, port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| OnboardError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| OnboardError::Listen { addr, source })?;
    Ok((listener, bound))
}

/// What one browser request to the redirect path brought.
enum Callback {
    Code(String),
    Denied { error: String, description: String },
}

/// Serves the redirect path until a request with the right state arrives.
async fn receive_code(
    listener: TcpListener,
    path: String,
    state: String,
) -> Result<String, OnboardError> {
    let (tx, mut rx) = mpsc::channel::<Callback>(4);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (tx, path, state) = (tx.clone(), path.clone(), state.clone());
                tokio::spawn(async move {
                    if let Some(cb) = handle_connection(stream, &path, &state).await {
                        let _ = tx.send(cb).await;
                    }
                });
            }
            Some(cb) = rx.recv() => {
                return match cb {
                    Callback::Code(code) => Ok(code),
                    Callback::Denied { error, description } => {
                        Err(OnboardError::Denied { error, description })
                    }
                };
            }
        }
    }
}

/// Reads one request, answers it, and returns the callback it carried (if any).
async fn handle_connection(mut stream: TcpStream, path: &str, state: &str) -> Option<Callback> {
    let head = tokio::time::timeout(REQUEST_READ_TIMEOUT, read_head(&mut stream))
        .await
        .ok()??;
    let target = head
        .lines()
        .next()
        .and_then(|line| {
            let mut parts = line.split_whitespace();
            (parts.next() == Some("GET")).then(|| parts.next())?
        })
        .and_then(|t| Url::parse(&format!("http://localhost{t}")).ok());
    let Some(target) = target else {
        respond(
            &mut stream,
            "400 Bad Request",
            "Bad request",
            "This listener only answers the consent redirect.",
        )
        .await;
        return None;
    };
    if target.path() != path {
        respond(
            &mut stream,
            "404 Not Found",
            "Not found",
            "This listener only answers the consent redirect.",
        )
        .await;
        return None;
    }
    let q: HashMap<String, String> = target.query_pairs().into_owned().collect();
    if q.get("state").map(String::as_str) != Some(state) {
        respond(
            &mut stream,
            "400 Bad Request",
            "Unexpected answer",
            "This answer does not belong to the consent request m365-devo is waiting for (state mismatch). Open the URL it printed.",
        )
        .await;
        return None;
    }
    if let Some(error) = q.get("error") {
        let description = q.get("error_description").cloned().unwrap_or_default();
        respond(
            &mut stream,
            "200 OK",
            "Consent not granted",
            &format!("{error}: {description}"),
        )
        .await;
        return Some(Callback::Denied {
            error: error.clone(),
            description,
        });
    }
    match q.get("code").filter(|c| !c.is_empty()) {
        Some(code) => {
            respond(
                &mut stream,
                "200 OK",
                "Consent received",
                "m365-devo has received the consent. You can close this window.",
            )
            .await;
            Some(Callback::Code(code.clone()))
        }
        None => {
            respond(
                &mut stream,
                "400 Bad Request",
                "No code",
                "The redirect carries no code.",
            )
            .await;
            None
        }
    }
}

/// Reads up to the end of the request head.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_REQUEST_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

async fn respond(stream: &mut TcpStream, status: &str, title: &str, message: &str) {
    let body = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>m365-devo: {t}</title></head>\
         <body><h1>{t}</h1><p>{m}</p></body></html>",
        t = html_escape(title),
        m = html_escape(message)
    );
    let res = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(res.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Exchanges the code and returns the access token's claims.
async fn exchange(
    plan: &Plan,
    redirect_uri: &Url,
    code: &str,
    secret: &SecretString,
) -> Result<serde_json::Map<String, Value>, OnboardError> {
    let path = if plan.v2 {
        "common/oauth2/v2.0/token"
    } else {
        "common/oauth2/token"
    };
    let url = format!("{}/{path}", authority(plan));
    let http = http_client(plan.ca_pem.as_deref())
        .map_err(|e| OnboardError::Usage(format!("--ca-file: {e}")))?;
    let scope = plan.endpoints.scope();
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", plan.client_id.as_str()),
        ("code", code),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_secret", secret.expose_secret()),
    ];
    if plan.v2 {
        form.push(("scope", scope.as_str()));
    } else {
        form.push(("resource", plan.endpoints.resource.as_str()));
    }
    let res = http
        .post(&url)
        .form(&form)
        .timeout(EXCHANGE_TIMEOUT)
        .send()
        .await
        .map_err(|e| OnboardError::Transport {
            url: url.clone(),
            detail: e.without_url().to_string(),
        })?;
    let status = res.status().as_u16();
    let body: Value = res.json().await.map_err(|e| OnboardError::Transport {
        url: url.clone(),
        detail: format!("unreadable answer (HTTP {status}): {}", e.without_url()),
    })?;
    if !(200..300).contains(&status) {
        let text = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        return Err(OnboardError::Refused {
            url,
            status,
            error: text("error"),
            description: text("error_description"),
        });
    }
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| OnboardError::BadAnswer("no access_token".to_owned()))?;
    jwt_claims(token)
}

/// The payload of a JWT, read without verifying the signature: the token came straight from
/// the authority over TLS, and only `tid` and `roles` are read for display.
fn jwt_claims(token: &str) -> Result<serde_json::Map<String, Value>, OnboardError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| OnboardError::BadAnswer("the access token is not a JWT".to_owned()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| {
            OnboardError::BadAnswer("the access token's payload is not base64url".to_owned())
        })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(OnboardError::BadAnswer(
            "the access token's payload is not a JSON object".to_owned(),
        )),
    }
}

/// The `tenants[]` entry for the consented tenant.
fn tenant_block(plan: &Plan, tenant_id: &str, secret: &SecretRef) -> Value {
    let secret = match secret {
        SecretRef::Env(var) => json!({ "env": var }),
        SecretRef::File(path) => json!({ "file": path }),
    };
    let cloud = match plan.preset {
        Some(p) => json!(p.name()),
        None => json!({
            "api_base": plan.endpoints.api_base.as_str().trim_end_matches('/'),
            "authority_base": plan.endpoints.authority_base.as_str().trim_end_matches('/'),
            "resource": plan.endpoints.resource,
        }),
    };
    let mut block = serde_json::Map::new();
    if let Some(name) = &plan.name {
        block.insert("name".to_owned(), json!(name));
    }
    block.insert("tenant_id".to_owned(), json!(tenant_id));
    block.insert("client_id".to_owned(), json!(plan.client_id));
    block.insert(
        "auth".to_owned(),
        json!({ "type": "client_secret", "client_secret": secret }),
    );
    block.insert("cloud".to_owned(), cloud);
    if let Some(ca) = &plan.ca_file {
        block.insert("ca_file".to_owned(), json!(path_text(ca)));
    }
    Value::Object(block)
}

fn path_text(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_for(cloud: &str, v2: bool) -> Plan {
        let preset = CloudPreset::from_name(cloud).expect("preset");
        Plan {
            client_id: "6f0c5a2e-3b7d-4c1e-9a8f-2d4b6c8e0a13".to_owned(),
            endpoints: preset.endpoints(),
            preset: Some(preset),
            v2,
            ca_file: None,
            ca_pem: None,
            name: None,
        }
    }

    // Proves the v1 consent URL is the documented one for the chosen cloud: /common authorize
    // with the client id, redirect URI, the cloud's resource, admin-consent prompt and state.
    #[test]
    fn v1_consent_url_for_gcc_high() {
        let redirect = Url::parse("http://localhost:8400/").expect("url");
        let url = consent_url(&plan_for("gcc_high", false), &redirect, "st").expect("url");
        assert_eq!(url.host_str(), Some("login.microsoftonline.us"));
        assert_eq!(url.path(), "/common/oauth2/authorize");
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "6f0c5a2e-3b7d-4c1e-9a8f-2d4b6c8e0a13");
        assert_eq!(q["redirect_uri"], "http://localhost:8400/");
        assert_eq!(q["resource"], "https://manage.office365.us");
        assert_eq!(q["prompt"], "admin_consent");
        assert_eq!(q["state"], "st");
    }

    // Proves the v2 form names the resource as a `/.default` scope instead of `resource`.
    #[test]
    fn v2_consent_url_uses_scope() {
        let redirect = Url::parse("http://localhost:8400/").expect("url");
        let url = consent_url(&plan_for("commercial", true), &redirect, "st").expect("url");
        assert_eq!(url.path(), "/common/oauth2/v2.0/authorize");
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["scope"], "https://manage.office.com/.default");
        assert!(!q.contains_key("resource"));
    }

    // Proves the tenant block refers to the secret by its source and names the preset cloud.
    #[test]
    fn tenant_block_refers_to_the_secret() {
        let block = tenant_block(
            &plan_for("commercial", false),
            "11111111-2222-3333-4444-555555555555",
            &SecretRef::Env("MY_SECRET".to_owned()),
        );
        assert_eq!(block["tenant_id"], "11111111-2222-3333-4444-555555555555");
        assert_eq!(block["auth"]["client_secret"]["env"], "MY_SECRET");
        assert_eq!(block["cloud"], "commercial");
    }

    // Proves claims are read from a JWT payload, and non-JWTs are refused.
    #[test]
    fn jwt_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"tid":"abc","roles":["r"]}"#);
        let claims = jwt_claims(&format!("h.{payload}.s")).expect("claims");
        assert_eq!(claims["tid"], "abc");
        assert!(jwt_claims("opaque").is_err());
    }
}
