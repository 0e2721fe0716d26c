//! `m365-devo check-config`: Devo's own template passes, a broken file fails with exit code 2
//! and names every key path, and no secret value is echoed.

use std::process::Command;

fn run(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_m365-devo"))
        .arg("check-config")
        .arg(file)
        .output()
        .expect("m365-devo runs")
}

// Devo's collector parameters, unchanged, are a valid configuration.
#[test]
fn devo_template_is_valid() {
    let template =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/devo-template.json");
    let out = run(&template);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("valid") && stdout.contains("5 stream(s)"),
        "{stdout}"
    );
}

// Several mistakes at once are all reported with their key paths; the secret is not echoed.
#[test]
fn broken_config_names_every_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    std::fs::write(
        &file,
        r#"{"inputs":{"office365":{"id":"1","enabled":true,
            "credentials":{"client_id":"not-a-guid","tenant_id":"also-not-a-guid","client_secret":"s3cr3t-VALUE-xyz"},
            "services":{"exchange":{"start_time_in_utc":"yesterday"}}}},
           "kafka":{"partitions":0}}"#,
    )
    .unwrap();
    let out = run(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for path in [
        "inputs.office365.credentials.client_id",
        "inputs.office365.credentials.tenant_id",
        "inputs.office365.services.exchange.start_time_in_utc",
        "kafka.partitions",
    ] {
        assert!(stderr.contains(path), "{path} not named in:\n{stderr}");
    }
    assert!(
        !stderr.contains("s3cr3t-VALUE-xyz"),
        "the secret was echoed:\n{stderr}"
    );
}
