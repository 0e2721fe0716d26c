//! Loading good configurations: Devo's own collector parameters unchanged, the YAML
//! equivalent, our sections, secrets from env and files, cloud presets, and the promise that
//! loading neither prints secrets nor touches the network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use m365_common::config::{
    self, Alg, CloudPreset, ContentType, Credential, DateStyle, Format, LoadOptions, Output,
    TokenEndpoint, Transactions,
};
use secrecy::ExposeSecret;

const TENANT: &str = "8f4c6b2e-1a3d-4e5f-9a7b-0c1d2e3f4a5b";
const CLIENT: &str = "3c9d1e2f-7a4b-4c5d-8e6f-0a1b2c3d4e5f";

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

fn opts() -> LoadOptions {
    LoadOptions::new().with_now(Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap())
}

/// The day after the template's start time, so no "older than 7 days" warning applies.
fn opts_template() -> LoadOptions {
    LoadOptions::new().with_now(Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap())
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A self-signed RSA certificate and key, PEM.
fn rsa_cert() -> (String, String) {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let cert = rcgen::CertificateParams::new(vec!["m365-devo-test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

// Devo's own template loads as it is and becomes one tenant with five streams in API order.
#[test]
fn devo_template_json_loads_unchanged() {
    let path = deploy("devo-template.json");
    let config = config::load_with(&path, &opts_template()).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let tenants = config.tenants();
    assert_eq!(tenants.len(), 1);
    let t = &tenants[0];
    assert_eq!(t.name, "office365");
    assert_eq!(t.key_path, "inputs.office365");
    assert_eq!(t.tenant_id, TENANT);
    assert_eq!(t.client_id, CLIENT);
    assert_eq!(t.publisher_identifier, TENANT);
    assert_eq!(t.requests_per_minute, 2000);
    assert_eq!(t.token_endpoint, TokenEndpoint::V2);
    assert_eq!(t.cloud, Some(CloudPreset::Commercial));
    assert_eq!(t.endpoints.api_base.host_str(), Some("manage.office.com"));
    assert!(t.uri_retry);
    match &t.credential {
        Credential::ClientSecret(s) => assert_eq!(
            s.expose_secret(),
            "REPLACE-with-the-client-secret-of-the-app"
        ),
        other => panic!("unexpected credential {other:?}"),
    }
    let kinds: Vec<ContentType> = t.streams.iter().map(|s| s.content_type).collect();
    assert_eq!(kinds, ContentType::ALL.to_vec());
    let names: Vec<&str> = t.streams.iter().map(|s| s.content_type.as_str()).collect();
    assert_eq!(
        names,
        [
            "Audit.AzureActiveDirectory",
            "Audit.Exchange",
            "Audit.SharePoint",
            "Audit.General",
            "DLP.All"
        ]
    );
    let aad = t.stream(ContentType::AzureActiveDirectory).unwrap();
    assert_eq!(
        aad.override_tag.as_deref(),
        Some("cloud.office365.management.azureactivedirectory")
    );
    assert_eq!(aad.bloom_filter_size, 2_000_000);
    assert_eq!(aad.bloom_filter_buffer_size, 2);
    assert_eq!(
        aad.start_time,
        Some(Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap())
    );
    let dlp = t.stream(ContentType::DlpAll).unwrap();
    assert_eq!(dlp.override_tag, None);
    assert_eq!(dlp.bloom_filter_size, 1_000_000, "consumer default applies");
    // Sections absent from Devo's file take their defaults.
    assert_eq!(config.kafka.bootstrap_servers, None);
    assert_eq!(config.kafka.topic("uris"), "m365.uris");
    assert_eq!(config.kafka.partitions, 6);
    assert_eq!(config.kafka.transactions, Transactions::Auto);
    assert!(config.devo.is_none());
    assert_eq!(config.producer.sweep_horizon_hours, 24);
    assert_eq!(config.health.tag, "my.app.m365devo.health");
}

// The YAML rendering of the template gives exactly the same tenant and streams.
#[test]
fn devo_template_yaml_matches_json() {
    let json = config::load_with(&deploy("devo-template.json"), &opts_template()).unwrap();
    let yaml = config::load_with(&deploy("devo-template.yaml"), &opts_template())
        .unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (&json.tenants()[0], &yaml.tenants()[0]);
    assert_eq!(a.tenant_id, b.tenant_id);
    assert_eq!(a.client_id, b.client_id);
    assert_eq!(a.streams, b.streams);
    assert_eq!(a.uri_retry, b.uri_retry);
    assert!(yaml.warnings.is_empty(), "{:?}", yaml.warnings);
}

// The full example in deploy/ is valid and fills every section.
#[test]
fn full_example_yaml_loads() {
    let o = opts().with_env(env(&[
        ("M365_CLIENT_SECRET", "secret-one"),
        ("FABRIKAM_CLIENT_SECRET", "secret-two"),
        ("KAFKA_SASL_PASSWORD", "kafka-pass"),
        ("DEVO_HTTP_TOKEN", "devo-token"),
    ]));
    let c = config::load_with(&deploy("example.yaml"), &o).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.tenants().len(), 2);
    let gov = &c.tenants()[1];
    assert_eq!(gov.name, "fabrikam-gov");
    assert_eq!(gov.cloud, Some(CloudPreset::GccHigh));
    assert_eq!(gov.requests_per_minute, 1000);
    let kinds: Vec<ContentType> = gov.streams.iter().map(|s| s.content_type).collect();
    assert_eq!(
        kinds,
        [
            ContentType::AzureActiveDirectory,
            ContentType::Exchange,
            ContentType::DlpAll
        ]
    );
    assert_eq!(
        gov.streams[0].start_time,
        Some(Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap())
    );
    assert_eq!(
        c.kafka.bootstrap_servers.as_deref(),
        Some("kafka-1:9092,kafka-2:9092,kafka-3:9092")
    );
    assert_eq!(c.kafka.replication_factor, Some(3));
    assert_eq!(c.kafka.properties.get("sasl.password"), Some("kafka-pass"));
    assert_eq!(
        c.kafka.properties.get("security.protocol"),
        Some("SASL_SSL")
    );
    let devo = c.devo.as_ref().unwrap();
    match &devo.output {
        Output::DevoHttp {
            endpoint,
            domain,
            token,
        } => {
            assert_eq!(endpoint.as_str(), "https://http-eu.devo.io/");
            assert_eq!(domain, "mycompany");
            assert_eq!(token.expose_secret(), "devo-token");
        }
        other => panic!("unexpected output {other:?}"),
    }
    assert_eq!(devo.line.pri(), 14);
    assert_eq!(devo.line.date_style, DateStyle::DevoSdk);
    assert!(c.logging.json);
    assert_eq!(c.metrics.listen_address.port(), 9464);
}

// Secrets are read from an environment variable and from a file (trailing newline dropped).
#[test]
fn secrets_from_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "from-the-file\n").unwrap();
    let text = format!(
        r#"{{"tenants":[
          {{"tenant_id":"{TENANT}","client_id":"{CLIENT}","auth":{{"type":"client_secret","client_secret":{{"env":"MY_SECRET"}}}}}},
          {{"tenant_id":"11111111-2222-4333-8444-555555555555","client_id":"{CLIENT}",
            "auth":{{"type":"client_secret","client_secret":{{"file":"secret.txt"}}}}}}]}}"#
    );
    let o = opts().with_env(env(&[("MY_SECRET", "from-the-env")]));
    let c =
        config::from_text(&text, Format::Json, dir.path(), &o).unwrap_or_else(|e| panic!("{e}"));
    let secrets: Vec<String> = c
        .tenants()
        .iter()
        .map(|t| match &t.credential {
            Credential::ClientSecret(s) => s.expose_secret().to_string(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(secrets, ["from-the-env", "from-the-file"]);
}

// Debug output of the raw and the validated configuration never contains a secret value.
#[test]
fn debug_output_hides_every_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = rsa_cert();
    std::fs::write(dir.path().join("app.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("app.key"), &key).unwrap();
    let text = format!(
        r#"{{"inputs":{{"office365":{{"credentials":{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","client_secret":"S3CRET-client-value"}}}}}},
        "tenants":[{{"tenant_id":"11111111-2222-4333-8444-555555555555","client_id":"{CLIENT}",
           "auth":{{"type":"certificate","cert_file":"app.crt","key_file":"app.key"}}}}],
        "kafka":{{"properties":{{"sasl.password":"S3CRET-kafka-value","sasl.username":"bob","ssl.key.password":{{"env":"KP"}},"sasl.oauthbearer.client.secret":987654321}}}},
        "devo":{{"type":"devo_http","endpoint":"https://http-eu.devo.io","domain":"d","token":"S3CRET-token-value"}}}}"#
    );
    let o = opts().with_env(env(&[("KP", "S3CRET-env-value")]));
    let raw = config::parse::parse_raw(&text, Format::Json).unwrap();
    let c = raw
        .validate(dir.path(), &o)
        .unwrap_or_else(|e| panic!("{e}"));
    let key_body = key.lines().nth(1).unwrap().to_string();
    for dump in [format!("{raw:?}"), format!("{c:?}"), format!("{c:#?}")] {
        for secret in [
            "S3CRET-client-value",
            "S3CRET-kafka-value",
            "S3CRET-token-value",
            "S3CRET-env-value",
        ] {
            assert!(!dump.contains(secret), "{secret} leaked");
        }
        assert!(!dump.contains(&key_body), "private key leaked");
        assert!(
            !dump.contains("987654321"),
            "unquoted numeric secret leaked"
        );
    }
    // Non-secret properties stay visible for debugging.
    assert!(format!("{:?}", c.kafka.properties).contains("bob"));
}

// A certificate credential loads both PEM files and keeps alg and thumbprint choices.
#[test]
fn certificate_credential_loads_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = rsa_cert();
    std::fs::write(dir.path().join("app.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("app.key"), &key).unwrap();
    let text = format!(
        "tenants:\n  - tenant_id: {TENANT}\n    client_id: {CLIENT}\n    token_endpoint: v1\n    auth:\n      type: certificate\n      cert_file: app.crt\n      key_file: app.key\n      alg: PS256\n      x5t: false\n"
    );
    let c = config::from_text(&text, Format::Yaml, dir.path(), &opts())
        .unwrap_or_else(|e| panic!("{e}"));
    let t = &c.tenants()[0];
    assert_eq!(t.token_endpoint, TokenEndpoint::V1);
    match &t.credential {
        Credential::Certificate {
            cert_pem,
            key_pem,
            alg,
            x5t,
            x5t_s256,
        } => {
            assert_eq!(cert_pem, &cert);
            assert_eq!(key_pem.expose_secret(), key);
            assert_eq!(*alg, Alg::Ps256);
            assert!(!*x5t && *x5t_s256);
        }
        other => panic!("unexpected {other:?}"),
    }
}

// Each preset yields the API host, authority host, resource and v2 scope of the reference table.
#[test]
fn cloud_presets_produce_the_right_hosts() {
    let table = [
        (
            "commercial",
            "manage.office.com",
            "login.microsoftonline.com",
        ),
        ("gcc", "manage-gcc.office.com", "login.microsoftonline.com"),
        (
            "gcc_high",
            "manage.office365.us",
            "login.microsoftonline.us",
        ),
        (
            "dod",
            "manage.protection.apps.mil",
            "login.microsoftonline.us",
        ),
    ];
    for (name, api, authority) in table {
        let text = format!(
            r#"{{"tenants":[{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","cloud":"{name}","auth":{{"type":"client_secret","client_secret":"x"}}}}]}}"#
        );
        let c = config::from_text(&text, Format::Json, Path::new("."), &opts())
            .unwrap_or_else(|e| panic!("{e}"));
        let e = &c.tenants()[0].endpoints;
        assert_eq!(e.api_base.host_str(), Some(api), "{name}");
        assert_eq!(e.authority_base.host_str(), Some(authority), "{name}");
        assert_eq!(e.resource, format!("https://{api}"));
        assert_eq!(e.scope(), format!("https://{api}/.default"));
        assert_eq!(
            e.token_url(TENANT, TokenEndpoint::V2).unwrap().as_str(),
            format!("https://{authority}/{TENANT}/oauth2/v2.0/token")
        );
        assert_eq!(
            e.feed_base(TENANT).unwrap().as_str(),
            format!("https://{api}/api/v1.0/{TENANT}/activity/feed/")
        );
    }
}

// Explicit endpoints (the local simulator) with an extra CA; resource defaults to the API origin.
#[test]
fn explicit_cloud_with_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = rsa_cert();
    std::fs::write(dir.path().join("ca.pem"), &cert).unwrap();
    let text = format!(
        r#"{{"tenants":[{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","ca_file":"ca.pem",
           "cloud":{{"api_base":"https://127.0.0.1:8443","authority_base":"http://127.0.0.1:8080/login"}},
           "auth":{{"type":"client_secret","client_secret":"x"}}}}]}}"#
    );
    let c = config::from_text(&text, Format::Json, dir.path(), &opts())
        .unwrap_or_else(|e| panic!("{e}"));
    let t = &c.tenants()[0];
    assert_eq!(t.cloud, None);
    assert_eq!(t.endpoints.resource, "https://127.0.0.1:8443");
    assert_eq!(t.ca_pem.as_deref(), Some(cert.as_str()));
    assert_eq!(
        t.endpoints
            .token_url(TENANT, TokenEndpoint::V1)
            .unwrap()
            .as_str(),
        format!("http://127.0.0.1:8080/login/{TENANT}/oauth2/token")
    );
}

// Validation is pure: hosts that cannot resolve (RFC 6761 `.invalid`) are accepted, because
// nothing is resolved or connected while loading.
#[test]
fn loading_makes_no_network_calls() {
    let text = format!(
        r#"{{"tenants":[{{"tenant_id":"{TENANT}","client_id":"{CLIENT}",
           "cloud":{{"api_base":"https://api.m365.invalid","authority_base":"https://login.m365.invalid"}},
           "auth":{{"type":"client_secret","client_secret":"x"}}}}],
           "kafka":{{"bootstrap_servers":"kafka.m365.invalid:9092"}},
           "devo":{{"type":"tcp","address":"relay.m365.invalid","port":13000}}}}"#
    );
    let c = config::from_text(&text, Format::Json, Path::new("."), &opts())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.tenants()[0].endpoints.api_base.host_str(),
        Some("api.m365.invalid")
    );
    match &c.devo.as_ref().unwrap().output {
        Output::Tcp { address, port } => {
            assert_eq!((address.as_str(), *port), ("relay.m365.invalid", 13000))
        }
        other => panic!("unexpected {other:?}"),
    }
}

// A devo_tls output loads its three PEM files; SNI defaults to the address.
#[test]
fn devo_tls_output_loads_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = rsa_cert();
    for (f, body) in [("d.crt", &cert), ("d.key", &key), ("chain.crt", &cert)] {
        std::fs::write(dir.path().join(f), body).unwrap();
    }
    let text = format!(
        "inputs:\n  office365:\n    credentials: {{tenant_id: {TENANT}, client_id: {CLIENT}, client_secret: x}}\ndevo:\n  type: devo_tls\n  address: collector-eu.devo.io\n  cert_file: d.crt\n  key_file: d.key\n  chain_file: chain.crt\n  facility: 16\n  severity: 3\n  connections: 2\n"
    );
    let c = config::from_text(&text, Format::Yaml, dir.path(), &opts())
        .unwrap_or_else(|e| panic!("{e}"));
    let d = c.devo.unwrap();
    assert_eq!(d.line.pri(), 131);
    assert_eq!(d.connections, 2);
    match d.output {
        Output::DevoTls {
            address,
            port,
            sni,
            tls,
        } => {
            assert_eq!(
                (address.as_str(), port, sni.as_str()),
                ("collector-eu.devo.io", 443, "collector-eu.devo.io")
            );
            assert_eq!(tls.cert_pem, cert);
            assert_eq!(tls.key_pem.expose_secret(), key);
        }
        other => panic!("unexpected {other:?}"),
    }
}

// Devo keys we do not know are tolerated and reported as warnings; a null service is enabled;
// an unknown extension falls back to sniffing the content.
#[test]
fn unknown_devo_keys_are_warnings_and_format_is_sniffed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.conf");
    std::fs::write(
        &path,
        format!(
            "inputs:\n  office365:\n    id: 12345\n    future_flag: true\n    credentials:\n      tenant_id: {TENANT}\n      client_id: {CLIENT}\n      client_secret: x\n    services:\n      exchange:\n      teams_new_service: {{}}\n"
        ),
    )
    .unwrap();
    let c = config::load_with(&path, &opts()).unwrap_or_else(|e| panic!("{e}"));
    let t = &c.tenants()[0];
    assert_eq!(t.streams.len(), 1);
    assert_eq!(t.streams[0].content_type, ContentType::Exchange);
    assert!(!t.uri_retry);
    let paths: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
    assert!(paths.contains(&"inputs.office365.future_flag"), "{paths:?}");
    assert!(
        paths.contains(&"inputs.office365.services.teams_new_service"),
        "{paths:?}"
    );
}

// Content type names parse from API strings and Devo service names, and print exactly.
#[test]
fn content_type_names() {
    for ct in ContentType::ALL {
        assert_eq!(ContentType::from_api_str(ct.as_str()), Some(ct));
        assert_eq!(ct.service_name().parse::<ContentType>(), Ok(ct));
        assert_eq!(ct.to_string(), ct.as_str());
    }
    assert_eq!(ContentType::from_api_str("audit.exchange"), None);
    assert_eq!(
        ContentType::from_name("audit.exchange"),
        Some(ContentType::Exchange)
    );
}
