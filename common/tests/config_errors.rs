//! Bad configurations: each is rejected with the key path(s) of every problem, several at
//! once, with line/column for parse errors, and without echoing secret values.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{TimeZone, Utc};
use m365_common::config::{self, ConfigErrors, Format, LoadOptions};

const TENANT: &str = "8f4c6b2e-1a3d-4e5f-9a7b-0c1d2e3f4a5b";
const CLIENT: &str = "3c9d1e2f-7a4b-4c5d-8e6f-0a1b2c3d4e5f";

fn opts() -> LoadOptions {
    LoadOptions::new()
        .with_now(Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap())
        .with_env(BTreeMap::new())
}

fn rejected(text: &str, format: Format) -> ConfigErrors {
    rejected_in(text, format, Path::new("/nonexistent-m365-devo-dir"))
}

fn rejected_in(text: &str, format: Format, dir: &Path) -> ConfigErrors {
    match config::from_text(text, format, dir, &opts()) {
        Ok(c) => panic!("configuration accepted: {c:?}"),
        Err(e) => e,
    }
}

fn assert_paths(e: &ConfigErrors, want: &[&str]) {
    for p in want {
        assert!(e.has_path(p), "no error at {p}; got:\n{e}");
    }
}

/// A valid `tenants` entry with `extra` JSON members appended.
fn tenant(extra: &str) -> String {
    format!(
        r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","auth":{{"type":"client_secret","client_secret":"x"}}{extra}}}"#
    )
}

// Devo's block with a malformed tenant id, no client id and no secret: three errors at once.
#[test]
fn devo_credentials_bad_guid_and_missing_fields() {
    let e = rejected(
        r#"{"inputs":{"office365":{"credentials":{"tenant_id":"contoso"}}}}"#,
        Format::Json,
    );
    assert_paths(
        &e,
        &[
            "inputs.office365.credentials.tenant_id",
            "inputs.office365.credentials.client_id",
            "inputs.office365.credentials.client_secret",
        ],
    );
    assert_eq!(e.len(), 3, "{e}");
    let text = e.to_string();
    assert!(text.contains("GUID") && text.contains("e.g."), "{text}");
}

// Devo's block without credentials names the credentials key.
#[test]
fn devo_credentials_missing() {
    let e = rejected(
        r#"{"inputs":{"office365":{"id":"12345","services":{"exchange":{}}}}}"#,
        Format::Json,
    );
    assert_paths(&e, &["inputs.office365.credentials"]);
}

// No tenant anywhere is an error at `tenants`.
#[test]
fn no_tenant_at_all() {
    let e = rejected(r#"{"kafka":{"topic_prefix":"m365"}}"#, Format::Json);
    assert_paths(&e, &["tenants"]);
}

// Certificate auth with files that do not exist reports both files, with their names.
#[test]
fn certificate_files_missing() {
    let t = format!(
        r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","auth":{{"type":"certificate","cert_file":"app.crt","key_file":"app.key","alg":"HS256"}}}}"#
    );
    let e = rejected(
        &format!(
            r#"{{"tenants":[{},{t}]}}"#,
            tenant(r#","tenant_id":"11111111-2222-4333-8444-555555555555""#).replacen(
                &format!(r#""tenant_id":"{TENANT}","#),
                "",
                1
            )
        ),
        Format::Json,
    );
    assert_paths(
        &e,
        &[
            "tenants[1].auth.cert_file",
            "tenants[1].auth.key_file",
            "tenants[1].auth.alg",
        ],
    );
    let text = e.to_string();
    assert!(
        text.contains("app.crt") && text.contains("app.key"),
        "{text}"
    );
}

// Certificate auth without files, an unknown auth type, and .pfx input are each reported.
#[test]
fn auth_type_and_certificate_fields() {
    let a = format!(
        r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","auth":{{"type":"certificate"}}}}"#
    );
    let b = format!(
        r#"{{"tenant_id":"11111111-2222-4333-8444-555555555555","client_id":"{CLIENT}","auth":{{"type":"password"}}}}"#
    );
    let c = format!(
        r#"{{"tenant_id":"22222222-2222-4333-8444-555555555555","client_id":"{CLIENT}","auth":{{"type":"certificate","pfx_file":"app.pfx","pfx_password":"pw"}}}}"#
    );
    let d =
        format!(r#"{{"tenant_id":"33333333-2222-4333-8444-555555555555","client_id":"{CLIENT}"}}"#);
    let e = rejected(&format!(r#"{{"tenants":[{a},{b},{c},{d}]}}"#), Format::Json);
    assert_paths(
        &e,
        &[
            "tenants[0].auth.cert_file",
            "tenants[0].auth.key_file",
            "tenants[1].auth.type",
            "tenants[2].auth.pfx_file",
            "tenants[3].auth",
        ],
    );
    assert!(e.to_string().contains("not supported yet"), "{e}");
}

// A cloud name that is not a preset, and explicit endpoints that are not https.
#[test]
fn bad_cloud() {
    let a = tenant(r#","cloud":"azure-china""#);
    let b =
        tenant(r#","cloud":{"api_base":"http://manage.example.com","authority_base":"ftp://x"}"#)
            .replace(TENANT, "11111111-2222-4333-8444-555555555555");
    let e = rejected(&format!(r#"{{"tenants":[{a},{b}]}}"#), Format::Json);
    assert_paths(
        &e,
        &[
            "tenants[0].cloud",
            "tenants[1].cloud.api_base",
            "tenants[1].cloud.authority_base",
        ],
    );
}

// Start times that do not parse or lie in the future are reported per service.
#[test]
fn bad_start_times() {
    let text = format!(
        r#"{{"inputs":{{"office365":{{"credentials":{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","client_secret":"x"}},
        "services":{{"exchange":{{"start_time_in_utc":"20/11/2026"}},"dlp":{{"start_time_in_utc":"2027-01-01T00:00:00Z"}}}}}}}}}}"#
    );
    let e = rejected(&text, Format::Json);
    assert_paths(
        &e,
        &[
            "inputs.office365.services.exchange.start_time_in_utc",
            "inputs.office365.services.dlp.start_time_in_utc",
        ],
    );
    assert!(e.to_string().contains("future"), "{e}");
}

// Rate limits outside 1..=60000 and a sweep horizon beyond 7 days.
#[test]
fn limits_out_of_range() {
    let a = tenant(r#","requests_per_minute":0"#);
    let b = tenant(r#","requests_per_minute":70000"#)
        .replace(TENANT, "11111111-2222-4333-8444-555555555555");
    let e = rejected(
        &format!(r#"{{"tenants":[{a},{b}],"producer":{{"sweep_horizon_hours":200}}}}"#),
        Format::Json,
    );
    assert_paths(
        &e,
        &[
            "tenants[0].requests_per_minute",
            "tenants[1].requests_per_minute",
            "producer.sweep_horizon_hours",
        ],
    );
    assert!(e.to_string().contains("from 1 to 168"), "{e}");
}

// Kafka: zero partitions, zero replication, bad transactions value, brokers in properties.
#[test]
fn bad_kafka_section() {
    let e = rejected(
        &format!(
            r#"{{"tenants":[{}],"kafka":{{"partitions":0,"replication_factor":0,"transactions":"maybe","bootstrap_servers":"kafka-1",
            "properties":{{"bootstrap.servers":"k:9092"}}}}}}"#,
            tenant("")
        ),
        Format::Json,
    );
    assert_paths(
        &e,
        &[
            "kafka.partitions",
            "kafka.replication_factor",
            "kafka.transactions",
            "kafka.bootstrap_servers",
            "kafka.properties.bootstrap.servers",
        ],
    );
}

// Producer coordination: an unknown mode, a session too short and a heartbeat over a third
// of the session each name their key.
#[test]
fn bad_producer_coordination() {
    let e = rejected(
        &format!(
            r#"{{"tenants":[{}],"producer":{{"coordination":"sometimes","group_session_timeout_ms":500}}}}"#,
            tenant("")
        ),
        Format::Json,
    );
    assert_paths(
        &e,
        &["producer.coordination", "producer.group_session_timeout_ms"],
    );
    let e = rejected(
        &format!(
            r#"{{"tenants":[{}],"producer":{{"group_session_timeout_ms":6000,"group_heartbeat_interval_ms":3000}}}}"#,
            tenant("")
        ),
        Format::Json,
    );
    assert_paths(&e, &["producer.group_heartbeat_interval_ms"]);
}

// Duplicate tenant ids (any case) between Devo's block and `tenants` name both places.
#[test]
fn duplicate_tenant_ids() {
    let text = format!(
        r#"{{"inputs":{{"office365":{{"credentials":{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","client_secret":"x"}}}}}},
        "tenants":[{}]}}"#,
        tenant("").replace(TENANT, &TENANT.to_uppercase())
    );
    let e = rejected(&text, Format::Json);
    assert_paths(&e, &["tenants[0].tenant_id"]);
    assert!(e.to_string().contains("inputs.office365"), "{e}");
}

// An unknown output type is named at devo.type.
#[test]
fn unknown_output_type() {
    let e = rejected(
        &format!(
            r#"{{"tenants":[{}],"devo":{{"type":"kinesis"}}}}"#,
            tenant("")
        ),
        Format::Json,
    );
    assert_paths(&e, &["devo.type"]);
    assert!(e.to_string().contains("devo_tls"), "{e}");
}

// devo_http without token, endpoint or domain reports all three.
#[test]
fn http_output_without_token() {
    let e = rejected(
        &format!(
            r#"{{"tenants":[{}],"devo":{{"type":"devo_http"}}}}"#,
            tenant("")
        ),
        Format::Json,
    );
    assert_paths(&e, &["devo.token", "devo.endpoint", "devo.domain"]);
}

// devo_tls without certificate, key and chain reports each file, plus bad PRI parts.
#[test]
fn tls_output_without_files() {
    let e = rejected(
        &format!(
            r#"{{"tenants":[{}],"devo":{{"type":"devo_tls","address":"collector-eu.devo.io","facility":24,"severity":8}}}}"#,
            tenant("")
        ),
        Format::Json,
    );
    assert_paths(
        &e,
        &[
            "devo.cert_file",
            "devo.key_file",
            "devo.chain_file",
            "devo.facility",
            "devo.severity",
        ],
    );
}

// A missing ca_file is named with its file name.
#[test]
fn missing_ca_file() {
    let e = rejected(
        &format!(
            r#"{{"tenants":[{}]}}"#,
            tenant(r#","ca_file":"sim-ca.pem""#)
        ),
        Format::Json,
    );
    assert_paths(&e, &["tenants[0].ca_file"]);
    assert!(e.to_string().contains("sim-ca.pem"), "{e}");
}

// Unknown content types, duplicates, and giving both services and content_types.
#[test]
fn bad_content_types() {
    let a = tenant(r#","content_types":["Audit.Exchange","Audit.Teams","exchange"]"#);
    let b = tenant(r#","content_types":["DLP.All"],"services":{"dlp":{}}"#)
        .replace(TENANT, "11111111-2222-4333-8444-555555555555");
    let c = tenant(r#","services":{"uri_retry":{}}"#)
        .replace(TENANT, "22222222-2222-4333-8444-555555555555");
    let e = rejected(&format!(r#"{{"tenants":[{a},{b},{c}]}}"#), Format::Json);
    assert_paths(
        &e,
        &[
            "tenants[0].content_types[1]",
            "tenants[0].content_types[2]",
            "tenants[1].content_types",
            "tenants[2].services",
        ],
    );
}

// An unknown key in our own section is a parse error with its path and line/column.
#[test]
fn unknown_key_in_our_section() {
    let text = format!(
        "{{\"tenants\":[{}],\n\"kafka\":{{\"partitons\":3}}}}",
        tenant("")
    );
    let e = rejected(&text, Format::Json);
    assert_eq!(e.len(), 1);
    let err = &e.errors[0];
    assert_eq!(err.path, "kafka.partitons");
    assert!(err.problem.contains("unknown field"), "{err}");
    assert_eq!(err.location.map(|l| l.line), Some(2));
}

// A YAML type error carries the key path and the line, without echoing the value.
#[test]
fn yaml_type_error_has_path_and_line() {
    let text = format!(
        "tenants:\n  - tenant_id: {TENANT}\n    client_id: {CLIENT}\n    requests_per_minute: hunter2-secret\n"
    );
    let e = rejected(&text, Format::Yaml);
    assert_eq!(e.len(), 1, "{e}");
    let err = &e.errors[0];
    assert_eq!(err.path, "tenants[0].requests_per_minute", "{err}");
    assert_eq!(err.location.map(|l| l.line), Some(4), "{err}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

// A JSON syntax error is reported with line and column.
#[test]
fn json_syntax_error() {
    let e = rejected("{\"tenants\": [\n  {\"tenant_id\": }\n]}", Format::Json);
    let err = &e.errors[0];
    assert!(err.problem.contains("syntax"), "{err}");
    assert_eq!(err.location.map(|l| l.line), Some(2));
}

// A missing environment variable is named; no secret value anywhere in the message.
#[test]
fn missing_env_secret_names_the_variable_only() {
    let text = format!(
        r#"{{"inputs":{{"office365":{{"credentials":{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","client_secret":{{"env":"M365_SECRET_NOT_SET"}}}}}}}},
        "tenants":[{}],
        "kafka":{{"properties":{{"sasl.password":{{"file":"/nonexistent/kafka-pass"}}}}}}}}"#,
        tenant(r#","name":"second""#)
            .replace(TENANT, "11111111-2222-4333-8444-555555555555")
            .replace(
                r#""client_secret":"x""#,
                r#""client_secret":"INLINE-SECRET-VALUE""#
            )
    );
    let e = rejected(&text, Format::Json);
    assert_paths(
        &e,
        &[
            "inputs.office365.credentials.client_secret",
            "kafka.properties.sasl.password",
        ],
    );
    let shown = format!("{e}\n{e:?}");
    assert!(shown.contains("M365_SECRET_NOT_SET"), "{shown}");
    assert!(shown.contains("/nonexistent/kafka-pass"), "{shown}");
    assert!(!shown.contains("INLINE-SECRET-VALUE"), "{shown}");
}

// A secret pasted into an id field is not echoed back by the GUID check.
#[test]
fn guid_errors_do_not_echo_values() {
    let text = format!(
        r#"{{"tenants":[{{"tenant_id":"{TENANT}","client_id":"Xy8Q~pasted-secret-by-mistake","auth":{{"type":"client_secret","client_secret":"x"}}}}]}}"#
    );
    let e = rejected(&text, Format::Json);
    assert_paths(&e, &["tenants[0].client_id"]);
    assert!(!e.to_string().contains("pasted-secret"), "{e}");
}

// An expired, non-RSA certificate is refused for client assertions, with both reasons.
#[test]
fn expired_non_rsa_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let mut params = rcgen::CertificateParams::new(vec!["old".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("old.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("old.key"), key.serialize_pem()).unwrap();
    let t = format!(
        r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","auth":{{"type":"certificate","cert_file":"old.crt","key_file":"old.key"}}}}"#
    );
    let e = rejected_in(&format!(r#"{{"tenants":[{t}]}}"#), Format::Json, dir.path());
    let at_cert: Vec<&str> = e
        .errors
        .iter()
        .filter(|x| x.path == "tenants[0].auth.cert_file")
        .map(|x| x.problem.as_str())
        .collect();
    assert_eq!(at_cert.len(), 2, "{e}");
    assert!(at_cert.iter().any(|p| p.contains("expired")), "{e}");
    assert!(at_cert.iter().any(|p| p.contains("RSA")), "{e}");
}

// An empty file is one clear error rather than a parser message.
#[test]
fn empty_file() {
    let e = rejected("  \n", Format::Yaml);
    assert_eq!(e.len(), 1);
    assert!(e.errors[0].problem.contains("empty"), "{e}");
}

// Many independent mistakes in one file are all reported together, numbered.
#[test]
fn many_errors_reported_at_once() {
    let text = format!(
        r#"{{"tenants":[{}],
          "kafka":{{"partitions":-1}},
          "devo":{{"type":"devo_http","endpoint":"https://http-eu.devo.io","domain":"d"}},
          "producer":{{"sweep_horizon_hours":169,"poll_interval_secs":0}},
          "consumer":{{"max_record_bytes":2048,"max_blob_bytes":1024,"bloom_false_positive_rate":0.5,"fallback_tag":"has space"}},
          "uri_retry":{{"backoff_base_secs":100,"backoff_max_secs":10}},
          "metrics":{{"listen_address":"everywhere"}},
          "health":{{"heartbeat_secs":0}},
          "logging":{{"level":"loud"}}}}"#,
        tenant(r#","token_endpoint":"v3","publisher_identifier":"""#)
    );
    let e = rejected(&text, Format::Json);
    let want = [
        "tenants[0].token_endpoint",
        "tenants[0].publisher_identifier",
        "kafka.partitions",
        "devo.token",
        "producer.sweep_horizon_hours",
        "producer.poll_interval_secs",
        "consumer.max_record_bytes",
        "consumer.bloom_false_positive_rate",
        "consumer.fallback_tag",
        "uri_retry.backoff_max_secs",
        "metrics.listen_address",
        "health.heartbeat_secs",
        "logging.level",
    ];
    assert_paths(&e, &want);
    assert!(e.len() >= want.len(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("{} configuration errors", e.len())),
        "{text}"
    );
    assert!(text.contains("\n  13. "), "{text}");
}
