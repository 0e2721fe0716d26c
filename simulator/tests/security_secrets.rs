//! The `m365-sim` binary at trace level (`RUST_LOG=trace`), with its fake Devo, serves a token
//! request with the client secret, refuses one with a wrong secret, serves the API with the
//! issued token and takes events on the Devo HTTP endpoint with its token — and never prints
//! the client secret, the wrong secret, the issued access token or the Devo token on stdout or
//! stderr.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

const CLIENT_SECRET: &str = "sim-secret-ClientSecret-4Hw8Pz2Jq";
const WRONG_SECRET: &str = "sim-secret-WrongSecret-9Cv3Xn6Ls";
const DEVO_TOKEN: &str = "simsecretDevoToken1Rb7Tk5Gm";

/// Fails naming the secret (and a little context, never the whole log) if `text` holds it.
fn assert_absent(text: &str, what: &str, secret: &str) {
    if let Some(at) = text.find(secret) {
        let from = text[..at]
            .char_indices()
            .rev()
            .nth(80)
            .map_or(0, |(i, _)| i);
        panic!("{what} appears in the output, after: {:?}", &text[from..at]);
    }
}

// Proves the simulator's own trace output (tenant and fake Devo) holds none of the secrets it
// handled: client secrets (right and wrong), the access token it issued, the Devo HTTP token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_output_never_contains_secrets() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_m365-sim"))
        .args([
            "--bind",
            "127.0.0.1",
            "--no-tls",
            "--subscribed",
            "--history-hours",
            "1",
        ])
        .args(["--devo", "--devo-http-token", DEVO_TOKEN])
        .env("RUST_LOG", "trace")
        .env("M365_SIM_CLIENT_SECRET", CLIENT_SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("m365-sim starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let mut ready = String::new();
    stdout.read_line(&mut ready).expect("ready line");
    let facts: serde_json::Value = serde_json::from_str(&ready).expect("ready line is JSON");
    let tenant = &facts["tenants"][0];
    let token_url = tenant["token_url_v2"].as_str().expect("token URL");
    let api_root = tenant["api_root"].as_str().expect("API root");
    let resource = facts["resource"].as_str().expect("resource");
    let client_id = facts["client_id"].as_str().expect("client id");
    let devo_http = facts["devo"]["http_url"].as_str().expect("Devo HTTP URL");

    let http = reqwest::Client::new();
    let scope = format!("{}/.default", resource.trim_end_matches('/'));
    let form = |secret: &str| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", client_id.to_string()),
            ("client_secret", secret.to_string()),
            ("scope", scope.clone()),
        ]
    };
    let wrong = http
        .post(token_url)
        .form(&form(WRONG_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401, "the wrong secret is refused");
    let answer: serde_json::Value = http
        .post(token_url)
        .form(&form(CLIENT_SECRET))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = answer["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    assert!(token.len() > 20);
    let listing = http
        .get(format!(
            "{api_root}subscriptions/content?contentType=Audit.Exchange"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status().as_u16(), 200, "the token is accepted");
    let blobs: Vec<serde_json::Value> = listing.json().await.unwrap();
    if let Some(uri) = blobs.first().and_then(|b| b["contentUri"].as_str()) {
        let blob = http.get(uri).bearer_auth(&token).send().await.unwrap();
        assert_eq!(blob.status().as_u16(), 200);
    }
    let devo = http
        .post(format!(
            "{}/stream/mydomain/token!{DEVO_TOKEN}/host/my.app.test",
            devo_http.trim_end_matches('/')
        ))
        .body("one line\n")
        .send()
        .await
        .unwrap();
    assert!(
        devo.status().is_success(),
        "Devo HTTP accepted: {}",
        devo.status()
    );

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let _ = child.wait();
    let text = format!("{ready}{rest}{}", err.join().unwrap());
    // Its log was captured (the simulator logs little beyond INFO, even at trace).
    assert!(
        text.contains("Stopping."),
        "the log was not captured:\n{text}"
    );

    assert_absent(&text, "the client secret", CLIENT_SECRET);
    assert_absent(&text, "the wrong client secret", WRONG_SECRET);
    assert_absent(&text, "the issued access token", &token);
    // A JWT's signature part alone is as secret as the whole token.
    if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() >= 16) {
        assert_absent(&text, "the access token's signature", signature);
    }
    assert_absent(&text, "the Devo HTTP token", DEVO_TOKEN);
}
