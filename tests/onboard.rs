//! `m365-devo onboard` against the fake tenant: the printed consent URL, followed by an HTTP
//! client as a browser would, lands on the command's local listener; the command exchanges
//! the code and prints the tenant block of the consenting tenant, which `check-config` accepts.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use m365_sim::tenant::{SimConfig, Simulator, TEST_CLIENT_ID, TEST_CLIENT_SECRET};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CUSTOMER: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const SECRET_VAR: &str = "M365_ONBOARD_TEST_SECRET";

fn sim_config() -> SimConfig {
    let mut cfg = SimConfig::for_tests(&[TENANT, CUSTOMER]);
    cfg.live_generation = false;
    cfg.history_hours = 0.0;
    cfg
}

/// A "browser": trusts the simulator's CA and follows redirects.
fn browser(sim: &Simulator) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Starts `onboard --listen` against the simulator on a free loopback port.
fn spawn_onboard(sim: &Simulator, ca: &Path) -> tokio::process::Child {
    let base = sim.base_url().to_string();
    let base = base.trim_end_matches('/');
    tokio::process::Command::new(env!("CARGO_BIN_EXE_m365-devo"))
        .args(["onboard", "--client-id", TEST_CLIENT_ID])
        .args(["--authority-base", base, "--api-base", base])
        .args(["--resource", sim.resource()])
        .arg("--ca-file")
        .arg(ca)
        .args(["--redirect-uri", "http://127.0.0.1:0/callback", "--listen"])
        .args(["--client-secret-env", SECRET_VAR, "--name", "customer"])
        .args(["--timeout-secs", "60"])
        .env(SECRET_VAR, TEST_CLIENT_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start m365-devo onboard")
}

/// Reads stdout lines until the consent URL; returns it and the lines read so far.
async fn consent_url(stdout: &mut BufReader<tokio::process::ChildStdout>) -> (String, Vec<String>) {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
            .await
            .expect("the consent URL is printed in time")
            .expect("read stdout");
        assert!(n > 0, "stdout ended before the consent URL: {seen:?}");
        let line = line.trim_end().to_owned();
        if line.starts_with("https://") {
            return (line, seen);
        }
        seen.push(line);
    }
}

// Proves the whole --listen flow: the consent URL names the app, redirect URI and resource;
// following it reaches the local listener; the command exits 0 and prints a tenant block with
// the consenting tenant's id that check-config accepts; no secret or code is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_flow_prints_the_consenting_tenant_block() {
    let sim = Simulator::start(sim_config())
        .await
        .expect("simulator starts");
    // The administrator who signs in at /common belongs to the customer tenant.
    sim.set_consenting_tenant(CUSTOMER).expect("known tenant");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("sim-ca.pem");
    std::fs::write(&ca, sim.ca_pem()).expect("write CA");

    let mut child = spawn_onboard(&sim, &ca);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (url, _) = consent_url(&mut stdout).await;
    let parsed = url::Url::parse(&url).expect("consent URL parses");
    assert_eq!(parsed.path(), "/common/oauth2/authorize");
    let q: std::collections::HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], TEST_CLIENT_ID);
    assert_eq!(q["resource"], sim.resource());
    assert!(q["redirect_uri"].starts_with("http://127.0.0.1:"), "{url}");
    assert!(
        !q["redirect_uri"].contains(":0/"),
        "port 0 is replaced: {url}"
    );

    let page = browser(&sim)
        .get(&url)
        .send()
        .await
        .expect("follow the consent URL");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .expect("page")
            .contains("Consent received")
    );

    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("onboard exits")
        .expect("wait");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.expect("read stdout");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).await.expect("read stderr");
    }
    assert_eq!(status.code(), Some(0), "stdout:\n{rest}\nstderr:\n{err}");
    for text in [&rest, &err] {
        assert!(
            !text.contains(TEST_CLIENT_SECRET),
            "secret printed:\n{text}"
        );
        assert!(!text.contains("0.SIM"), "code printed:\n{text}");
        assert!(!text.contains("eyJ"), "token printed:\n{text}");
    }
    assert!(
        rest.contains(&format!("Consent granted in tenant {CUSTOMER}")),
        "{rest}"
    );

    let start = rest.find("\n{").expect("a JSON block") + 1;
    let block: Value = serde_json::from_str(&rest[start..]).expect("the block is JSON");
    assert_eq!(block["tenant_id"], CUSTOMER);
    assert_eq!(block["client_id"], TEST_CLIENT_ID);
    assert_eq!(block["name"], "customer");
    assert_eq!(block["auth"]["type"], "client_secret");
    assert_eq!(block["auth"]["client_secret"]["env"], SECRET_VAR);
    assert_eq!(block["cloud"]["resource"], sim.resource());
    let grants = sim.consent_grants();
    assert_eq!(grants.len(), 1);
    assert!(grants[0].redeemed && grants[0].tenant_id == CUSTOMER);

    // The block is a valid tenant as it is.
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, json!({ "tenants": [block] }).to_string()).expect("write config");
    let check = tokio::process::Command::new(env!("CARGO_BIN_EXE_m365-devo"))
        .arg("check-config")
        .arg(&cfg)
        .env(SECRET_VAR, TEST_CLIENT_SECRET)
        .output()
        .await
        .expect("run check-config");
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    sim.shutdown().await;
}

// Proves a refused consent (the consenting tenant does not have the app) reaches the listener
// as an error, and the command exits 1 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_consent_exits_1() {
    let mut cfg = sim_config();
    cfg.tenants[1].apps.clear();
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    sim.set_consenting_tenant(CUSTOMER).expect("known tenant");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("sim-ca.pem");
    std::fs::write(&ca, sim.ca_pem()).expect("write CA");

    let mut child = spawn_onboard(&sim, &ca);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (url, _) = consent_url(&mut stdout).await;
    let page = browser(&sim)
        .get(&url)
        .send()
        .await
        .expect("follow the consent URL");
    assert!(
        page.text()
            .await
            .expect("page")
            .contains("Consent not granted")
    );
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("onboard exits")
        .expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("consent was not granted: access_denied"),
        "{err}"
    );
    assert!(sim.consent_grants().is_empty());
    sim.shutdown().await;
}

// Proves usage errors exit 2 (bad client id; --listen on a non-loopback redirect URI), and
// that without --listen the command prints the documented consent URL of the chosen cloud.
#[tokio::test]
async fn usage_errors_and_url_only_mode() {
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_m365-devo"))
                .arg("onboard")
                .args(&args)
                .env_remove("M365_CLIENT_SECRET")
                .output()
                .await
                .expect("run onboard")
        }
    };
    let out = run(&["--client-id", "not-a-guid"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--client-id"));

    let out = run(&[
        "--client-id",
        TEST_CLIENT_ID,
        "--listen",
        "--redirect-uri",
        "https://example.com/callback",
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--listen serves the redirect URI on this machine"),
        "{err}"
    );

    let out = run(&["--client-id", TEST_CLIENT_ID, "--cloud", "dod"]).await;
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let url = text
        .lines()
        .find(|l| l.starts_with("https://"))
        .expect("consent URL printed");
    let url = url::Url::parse(url).expect("URL");
    assert_eq!(url.host_str(), Some("login.microsoftonline.us"));
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["resource"], "https://manage.protection.apps.mil");
    assert_eq!(q["prompt"], "admin_consent");
}
