//! Checks of the deployment files at the workspace root against the code they describe:
//!
//! - the Grafana dashboard (`deploy/grafana/dashboards/m365-devo.json`): every metric name in
//!   its PromQL is a row of [`ALL_METRICS`] or a metric of the process collector, and every
//!   one of them appears in a real rendered `/metrics` text;
//! - its provisioning (datasource uid, dashboard folder) and `deploy/prometheus.yml` (scrape
//!   targets on the ports the compose configs listen on);
//! - `docker-compose.yml`: the services, images, commands, health checks, dependencies,
//!   profiles and mounts the stack relies on (a structural check: no Docker engine here);
//! - `deploy/compose/*.yaml`: they load with the real configuration loader;
//! - `deploy/compose/create-topics.sh`: it creates every topic of [`Topics`];
//! - `Dockerfile`: multi-stage, builds every binary the compose file runs, runs as non-root.
//!
//! The PromQL reader is small on purpose: it removes strings, label matchers and range
//! selectors, then keeps the identifiers that are neither functions, keywords, label lists
//! (`by (…)`, `on (…)` …) nor Grafana variables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use m365_common::config::{self, LoadOptions};
use m365_common::kafka::Topics;
use m365_common::metrics::{
    ALL_METRICS, MetricDef, ScrapeCollector, Scraped, encode_text, new_registry,
};
use serde_json::Value;

const DASHBOARD: &str = "deploy/grafana/dashboards/m365-devo.json";
const DATASOURCES: &str = "deploy/grafana/provisioning/datasources/prometheus.yml";
const DASHBOARD_PROVIDERS: &str = "deploy/grafana/provisioning/dashboards/m365-devo.yml";
const PROMETHEUS: &str = "deploy/prometheus.yml";
const COMPOSE: &str = "docker-compose.yml";
const CREATE_TOPICS: &str = "deploy/compose/create-topics.sh";
const STAGES: [(&str, &str); 3] = [
    ("producer", "m365-producer"),
    ("consumer", "m365-consumer"),
    ("forwarder", "m365-forwarder"),
];
/// Where the compose configs expect the simulator's certificates.
const SIM_CERT_DIR: &str = "/var/lib/m365-sim/certs";

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("common/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(rel)).unwrap_or_else(|e| panic!("parsing {rel}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is valid JSON")
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer}: expected a string in {v}"))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// PromQL: metric names of an expression.
// ---------------------------------------------------------------------------------------------

/// Keywords that are followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Keywords that are neither functions nor metrics.
const PLAIN_KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// `expr` without string literals, label matchers (`{…}`) and range selectors (`[…]`), each
/// replaced by a space.
fn strip_promql(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars();
    let (mut braces, mut brackets) = (0usize, 0usize);
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                // Skip the string literal, honouring backslash escapes (not in raw strings).
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                out.push(' ');
            }
            '{' => braces += 1,
            '}' => {
                braces = braces.saturating_sub(1);
                out.push(' ');
            }
            '[' => brackets += 1,
            ']' => {
                brackets = brackets.saturating_sub(1);
                out.push(' ');
            }
            _ if braces == 0 && brackets == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    /// Numbers and durations (`5m`, `1e-9` splits harmlessly into `1e`, `-`, `9`).
    Number,
    /// Grafana variables (`$tenant`, `$__rate_interval`).
    Variable,
    Punct(char),
}

fn tokens(stripped: &str) -> Vec<Token> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let chars: Vec<char> = stripped.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c == '$' || c.is_ascii_digit() || c == '.' {
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
            out.push(if c == '$' {
                Token::Variable
            } else {
                Token::Number
            });
        } else if is_ident(c) {
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// Every metric name that `expr` selects.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let toks = tokens(&strip_promql(expr));
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < toks.len() {
        if let Token::Ident(id) = &toks[i] {
            let lower = id.to_ascii_lowercase();
            // A function or aggregation: `name (` or, for aggregations, `name by|without (`.
            let next_is_paren = match toks.get(i + 1) {
                Some(Token::Punct('(')) => true,
                Some(Token::Ident(k)) => {
                    matches!(k.to_ascii_lowercase().as_str(), "by" | "without")
                }
                _ => false,
            };
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if next_is_paren {
                    // Skip `( label, label … )`.
                    let mut depth = 0usize;
                    i += 1;
                    while i < toks.len() {
                        match toks[i] {
                            Token::Punct('(') => depth += 1,
                            Token::Punct(')') => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        i += 1;
                    }
                }
            } else if !next_is_paren && !PLAIN_KEYWORDS.contains(&lower.as_str()) {
                names.insert(id.clone());
            }
        }
        i += 1;
    }
    names
}

/// Metric names of a Grafana Prometheus variable query: `label_values(metric, label)`,
/// `query_result(expr)`; `label_values(label)` and `metrics(…)` name none.
fn variable_query_metric_names(query: &str) -> BTreeSet<String> {
    let q = query.trim();
    let inner = |prefix: &str| {
        q.strip_prefix(prefix)
            .and_then(|r| r.trim_start().strip_prefix('('))
            .and_then(|r| r.strip_suffix(')'))
    };
    if let Some(args) = inner("label_values") {
        let stripped = strip_promql(args);
        match stripped.rfind(',') {
            // The metric part is everything before the last top-level comma.
            Some(_) => {
                let cut = args.rfind(',').unwrap_or(args.len());
                promql_metric_names(&args[..cut])
            }
            None => BTreeSet::new(),
        }
    } else if let Some(expr) = inner("query_result") {
        promql_metric_names(expr)
    } else {
        BTreeSet::new()
    }
}

/// Every PromQL expression of the dashboard (any `expr` string, at any depth).
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

/// Metric name -> where the dashboard uses it.
fn dashboard_metric_names(dash: &Value) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let mut exprs = Vec::new();
    dashboard_exprs(&dash["panels"], &mut exprs);
    for expr in &exprs {
        for n in promql_metric_names(expr) {
            names.entry(n).or_insert_with(|| format!("expr `{expr}`"));
        }
    }
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        let query = match &var["query"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("query")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        for n in variable_query_metric_names(&query) {
            names
                .entry(n)
                .or_insert_with(|| format!("variable `{}`", var["name"]));
        }
    }
    names
}

/// Names the process collector of [`new_registry`] exports on this platform.
fn process_metric_names() -> BTreeSet<String> {
    new_registry()
        .gather()
        .iter()
        .map(|mf| mf.name().to_string())
        .collect()
}

/// A `/metrics` text with one sample of every row of [`ALL_METRICS`] (each label `x`) and
/// the process collector, through the same collector type and encoder as the binaries.
fn render_every_metric() -> String {
    let registry = new_registry();
    ScrapeCollector::new(ALL_METRICS, |s| {
        for def in ALL_METRICS {
            let labels = vec!["x"; def.labels.len()];
            s.add(def, &labels, 1.0);
        }
    })
    .expect("collector of ALL_METRICS")
    .register(&registry)
    .expect("registered");
    encode_text(&registry)
}

// ---------------------------------------------------------------------------------------------
// The PromQL reader itself.
// ---------------------------------------------------------------------------------------------

// Proves the reader finds exactly the metric names in expressions with aggregations, label
// lists, matchers holding braces and quotes, ranges, offsets, vector matching and numbers.
#[test]
fn promql_reader_finds_exactly_the_metric_names() {
    let cases: [(&str, &[&str]); 7] = [
        (
            "sum by (tag) (rate(m365_a_total{tag=~\"a}b\",x='q\\'r'}[$__rate_interval]))",
            &["m365_a_total"],
        ),
        (
            "sum(rate(a_sum[5m])) / clamp_min(sum(rate(a_count[5m])), 1e-9)",
            &["a_sum", "a_count"],
        ),
        (
            "max by (group, topic, partition) (lag) or vector(0)",
            &["lag"],
        ),
        (
            "x_total / on (job) group_left (tenant) y_info offset 5m > bool 3",
            &["x_total", "y_info"],
        ),
        (
            "(sum(increase(g_total[24h])) or vector(0)) + (sum(increase(d_total[24h])) or vector(0))",
            &["g_total", "d_total"],
        ),
        (
            "sum without (instance) (rate(rec:rule_total[1h:5m])) unless $var",
            &["rec:rule_total"],
        ),
        ("avg(process_open_fds) BY (job)", &["process_open_fds"]),
    ];
    for (expr, want) in cases {
        let got = promql_metric_names(expr);
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{expr}");
    }
    assert_eq!(
        variable_query_metric_names("label_values(m{a=\"1,2\"}, tenant)"),
        BTreeSet::from(["m".to_string()])
    );
    assert!(variable_query_metric_names("label_values(tenant)").is_empty());
    assert_eq!(
        variable_query_metric_names("query_result(topk(3, z_total))"),
        BTreeSet::from(["z_total".to_string()])
    );
}

// ---------------------------------------------------------------------------------------------
// Dashboard.
// ---------------------------------------------------------------------------------------------

// Proves every metric name used by the dashboard exists: a row of ALL_METRICS or a metric of
// the process collector that every binary registers.
#[test]
fn dashboard_metrics_exist() {
    let dash = dashboard();
    let used = dashboard_metric_names(&dash);
    assert!(
        used.len() >= 30,
        "suspiciously few metric names found: {used:?}"
    );
    let known: BTreeSet<&str> = ALL_METRICS.iter().map(|d| d.name).collect();
    let process = process_metric_names();
    let unknown: Vec<String> = used
        .iter()
        .filter(|(n, _)| !known.contains(n.as_str()) && !process.contains(n.as_str()))
        .map(|(n, at)| format!("{n} (in {at})"))
        .collect();
    assert!(
        unknown.is_empty(),
        "metric names in {DASHBOARD} that no binary exports:\n  {}",
        unknown.join("\n  ")
    );
}

// Proves every metric name of the dashboard appears in a rendered /metrics text (the real
// collector and encoder), so the names are exported exactly as the dashboard spells them.
#[test]
fn dashboard_metrics_appear_in_rendered_metrics() {
    let scraped = Scraped::parse(&render_every_metric());
    let used = dashboard_metric_names(&dashboard());
    let missing: Vec<&String> = used.keys().filter(|n| !scraped.has(n)).collect();
    assert!(
        missing.is_empty(),
        "not in the rendered /metrics: {missing:?}"
    );
}

// Proves the dashboard shows what the issue asks for: lag per stream and per partition,
// records in/out by tag, dedup, retries, gaps, Devo lines and reconnects, readiness.
#[test]
fn dashboard_covers_the_required_signals() {
    let used = dashboard_metric_names(&dashboard());
    let required: [&MetricDef; 12] = [
        &m365_common::metrics::PRODUCER_CURSOR_LAG,
        &m365_common::metrics::PRODUCER_HORIZON_REMAINING,
        &m365_common::metrics::KAFKA_CONSUMER_LAG,
        &m365_common::metrics::CONSUMER_RECORDS_IN,
        &m365_common::metrics::CONSUMER_RECORDS_OUT,
        &m365_common::metrics::CONSUMER_RECORDS_DEDUPLICATED,
        &m365_common::metrics::CONSUMER_BLOBS_RETRIED,
        &m365_common::metrics::PRODUCER_GAPS,
        &m365_common::metrics::CONSUMER_BLOBS_DEAD,
        &m365_common::metrics::FORWARDER_LINES,
        &m365_common::metrics::FORWARDER_RECONNECTS,
        &m365_common::metrics::READY,
    ];
    for def in required {
        assert!(
            used.contains_key(def.name),
            "{} not on the dashboard",
            def.name
        );
    }
    // "By tag" and "per partition" mean the panels keep those labels.
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard()["panels"], &mut exprs);
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("m365_consumer_records_out_total") && e.contains("by (tag)"))
    );
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("m365_forwarder_lines_total") && e.contains("by (tag)"))
    );
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("m365_kafka_consumer_lag_messages") && e.contains("partition"))
    );
}

/// Every panel, rows' nested panels included.
fn all_panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

// Proves the dashboard is well formed for provisioning: unique uid and panel ids, every
// query panel has queries on the provisioned datasource uid, and the provider loads the folder
// that docker-compose.yml mounts the dashboard into.
#[test]
fn dashboard_matches_its_provisioning() {
    let dash = dashboard();
    assert_eq!(str_at(&dash, "/uid"), "m365-devo-pipeline");
    let ds = yaml(DATASOURCES);
    let ds_uid = str_at(&ds, "/datasources/0/uid");
    assert_eq!(str_at(&ds, "/datasources/0/type"), "prometheus");
    assert_eq!(str_at(&ds, "/datasources/0/url"), "http://prometheus:9090");

    let mut ids = BTreeSet::new();
    for p in all_panels(&dash) {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(str_at(p, "/datasource/uid"), ds_uid, "panel {id}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} has no query");
        for t in targets {
            assert_eq!(str_at(t, "/datasource/uid"), ds_uid, "panel {id}");
            assert!(!str_at(t, "/expr").trim().is_empty(), "panel {id}");
        }
        let w = p["gridPos"]["w"].as_u64().expect("width");
        let x = p["gridPos"]["x"].as_u64().expect("x");
        assert!(x + w <= 24, "panel {id} is wider than the grid");
    }

    let providers = yaml(DASHBOARD_PROVIDERS);
    let folder = str_at(&providers, "/providers/0/options/path");
    let compose = yaml(COMPOSE);
    let grafana = &compose["services"]["grafana"];
    let mounts = strings(grafana.get("volumes"));
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./deploy/grafana/dashboards:") && m.contains(folder)),
        "grafana does not mount the dashboards at {folder}: {mounts:?}"
    );
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./deploy/grafana/provisioning:/etc/grafana/provisioning")),
        "{mounts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Compose configs, Prometheus, topics.
// ---------------------------------------------------------------------------------------------

/// Loads `deploy/compose/<stage>.yaml` with the real loader, after pointing its certificate
/// paths at a throw-away PKI laid out as m365-sim writes it and inlining the secret.
fn load_compose_config(stage: &str, pki_dir: &Path) -> config::Config {
    let text = read(&format!("deploy/compose/{stage}.yaml"))
        .replace(SIM_CERT_DIR, &pki_dir.display().to_string())
        .replace("{env: M365_CLIENT_SECRET}", "test-only-secret");
    let path = pki_dir.join(format!("{stage}.yaml"));
    std::fs::write(&path, text).expect("writing the config copy");
    let options = if stage == "forwarder" {
        LoadOptions::new().allow_no_tenants()
    } else {
        LoadOptions::new()
    };
    config::load_with(&path, &options)
        .unwrap_or_else(|e| panic!("deploy/compose/{stage}.yaml does not load: {e}"))
}

fn sim_pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = m365_sim::certs::TestPki::generate("compose-test").expect("pki");
    pki.write_to(dir.path()).expect("tenant certs");
    let devo = m365_sim::certs::TestPki::generate("compose-devo").expect("pki");
    devo.write_to(&dir.path().join("devo")).expect("devo certs");
    dir
}

// Proves the three compose configs load with the real loader, point at the compose Kafka with
// the topic settings of kafka-init, and serve metrics on distinct ports (one namespace).
#[test]
fn compose_configs_load_and_agree() {
    let pki = sim_pki();
    let compose = yaml(COMPOSE);
    let init_env = &compose["services"]["kafka-init"]["environment"];
    let mut ports = BTreeSet::new();
    for (stage, _) in STAGES {
        let cfg = load_compose_config(stage, pki.path());
        assert_eq!(cfg.kafka.bootstrap_servers.as_deref(), Some("kafka:9092"));
        assert_eq!(cfg.kafka.topic_prefix, str_at(init_env, "/TOPIC_PREFIX"));
        assert_eq!(
            cfg.kafka.partitions.to_string(),
            str_at(init_env, "/PARTITIONS")
        );
        assert!(cfg.metrics.enabled, "{stage}");
        assert!(ports.insert(cfg.metrics.listen_address.port()), "{stage}");
        match stage {
            "forwarder" => assert!(cfg.devo.is_some(), "the forwarder needs an output"),
            _ => assert_eq!(cfg.tenants.len(), 1, "{stage}"),
        }
    }
}

// Proves Prometheus scrapes each stage on the port its compose config listens on, through
// the shared namespace's service name, with the job names the dashboard groups by.
#[test]
fn prometheus_scrapes_every_stage() {
    let pki = sim_pki();
    let prom = yaml(PROMETHEUS);
    let jobs = prom["scrape_configs"].as_array().expect("scrape_configs");
    for (stage, job) in STAGES {
        let port = load_compose_config(stage, pki.path())
            .metrics
            .listen_address
            .port();
        let cfg = jobs
            .iter()
            .find(|j| j["job_name"] == job)
            .unwrap_or_else(|| panic!("no scrape job {job}"));
        let targets = strings(cfg.pointer("/static_configs/0/targets"));
        assert_eq!(targets, vec![format!("m365-net:{port}")], "{job}");
        assert_eq!(cfg["metrics_path"], "/metrics", "{job}");
    }
}

// Proves the topic-init script creates every topic of the code's Topics table, the state
// topic compacted, with the replication and partitions kafka-init passes it.
#[test]
fn create_topics_script_covers_every_topic() {
    let script = read(CREATE_TOPICS);
    let topics = Topics::new("m365");
    for (name, compacted) in topics.all() {
        let suffix = name.strip_prefix("m365.").expect("prefixed");
        let line = script
            .lines()
            .find(|l| {
                l.contains(&format!("\"$prefix.{suffix}\""))
                    || l.split_whitespace()
                        .any(|w| w.trim_end_matches(';') == suffix)
            })
            .unwrap_or_else(|| panic!("{CREATE_TOPICS} does not create {name}"));
        if compacted {
            assert!(line.contains("cleanup.policy=compact"), "{name}: {line}");
        }
    }
    for var in [
        "KAFKA_BOOTSTRAP",
        "TOPIC_PREFIX",
        "PARTITIONS",
        "REPLICATION_FACTOR",
    ] {
        assert!(script.contains(&format!("${{{var}:-")), "{var} not read");
    }
    assert!(script.contains("--if-not-exists"), "re-runs must succeed");
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml and Dockerfile.
// ---------------------------------------------------------------------------------------------

/// The path part of a `${VAR:-default}` or plain bind source.
fn bind_source(mount: &str) -> Option<String> {
    let source = match mount.strip_prefix("${") {
        Some(rest) => {
            let end = rest.find('}')?;
            let inner = &rest[..end];
            inner.split_once(":-").map(|(_, d)| d.to_string())?
        }
        None => mount.split(':').next()?.to_string(),
    };
    source.starts_with('.').then_some(source)
}

// Proves docker-compose.yml has the structure the stack relies on: KRaft Kafka, the one-shot
// topic init, the three stages from the Dockerfile with their commands, /healthz checks and
// dependencies, the simulator behind the `sim` profile, Prometheus and Grafana; every bind
// source exists and every named volume is declared.
#[test]
fn compose_file_structure() {
    let compose = yaml(COMPOSE);
    let services = compose["services"].as_object().expect("services");
    for name in [
        "kafka",
        "kafka-init",
        "m365-net",
        "m365-sim",
        "producer",
        "consumer",
        "forwarder",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    // A service without `profiles` always starts; only the simulator is optional.
    for (name, svc) in services {
        let profiles = strings(svc.get("profiles"));
        if name == "m365-sim" {
            assert_eq!(profiles, vec!["sim".to_string()]);
        } else {
            assert!(profiles.is_empty(), "{name} has profiles {profiles:?}");
        }
    }

    let kafka = &services["kafka"];
    assert!(str_at(kafka, "/image").starts_with("apache/kafka:"));
    let roles = str_at(kafka, "/environment/KAFKA_PROCESS_ROLES");
    assert!(
        roles.contains("broker") && roles.contains("controller"),
        "{roles}"
    );
    assert!(
        kafka["environment"]
            .get("KAFKA_CONTROLLER_QUORUM_VOTERS")
            .is_some()
    );
    assert!(kafka["environment"].get("CLUSTER_ID").is_some());
    assert!(kafka.pointer("/healthcheck/test").is_some());

    let init = &services["kafka-init"];
    assert_eq!(
        str_at(init, "/depends_on/kafka/condition"),
        "service_healthy"
    );
    assert_eq!(init["restart"], "no");
    assert!(
        strings(init.get("volumes"))
            .iter()
            .any(|m| m.starts_with(&format!("./{CREATE_TOPICS}:")))
    );

    let pki = sim_pki();
    for (stage, binary) in STAGES {
        let svc = &services[stage];
        // Built from the repository's Dockerfile (through the shared anchor).
        assert_eq!(str_at(svc, "/build/dockerfile"), "Dockerfile", "{stage}");
        assert_eq!(str_at(svc, "/build/context"), ".", "{stage}");
        assert_eq!(
            strings(svc.get("command")),
            vec![binary, "--config", "/etc/m365-devo/config.yaml"],
            "{stage}"
        );
        assert_eq!(str_at(svc, "/network_mode"), "service:m365-net", "{stage}");
        let port = load_compose_config(stage, pki.path())
            .metrics
            .listen_address
            .port();
        let check = strings(svc.pointer("/healthcheck/test")).join(" ");
        assert!(
            check.contains(&format!("http://127.0.0.1:{port}/healthz")),
            "{stage}: {check}"
        );
        assert_eq!(
            str_at(svc, "/depends_on/kafka-init/condition"),
            "service_completed_successfully",
            "{stage}"
        );
        assert_eq!(
            str_at(svc, "/depends_on/m365-sim/condition"),
            "service_healthy"
        );
        assert_eq!(svc["depends_on"]["m365-sim"]["required"], false, "{stage}");
        let mounts = strings(svc.get("volumes"));
        assert!(
            mounts.iter().any(|m| m.contains(&format!(
                "./deploy/compose/{stage}.yaml}}:/etc/m365-devo/config.yaml"
            ))),
            "{stage}: {mounts:?}"
        );
    }

    let sim = &services["m365-sim"];
    let sim_cmd = strings(sim.get("command"));
    assert_eq!(sim_cmd.first().map(String::as_str), Some("m365-sim"));
    for flag in [
        "--bind=127.0.0.1",
        "--port=8443",
        "--devo",
        "--devo-tls-port=6514",
    ] {
        assert!(sim_cmd.iter().any(|a| a == flag), "m365-sim lacks {flag}");
    }
    assert!(sim_cmd.contains(&format!("--cert-dir={SIM_CERT_DIR}")));
    assert_eq!(str_at(sim, "/network_mode"), "service:m365-net");

    let prom_mounts = strings(services["prometheus"].get("volumes"));
    assert!(
        prom_mounts
            .iter()
            .any(|m| m.starts_with(&format!("./{PROMETHEUS}:")))
    );

    // Bind sources exist; named volumes are declared.
    let declared = compose["volumes"].as_object().expect("volumes");
    for (name, svc) in services {
        for m in strings(svc.get("volumes")) {
            match bind_source(&m) {
                Some(src) => assert!(root().join(&src).exists(), "{name}: {src} missing"),
                None => {
                    let volume = m.split(':').next().unwrap_or_default();
                    assert!(declared.contains_key(volume), "{name}: volume {volume}");
                }
            }
        }
    }
}

// Proves the Dockerfile is a multi-stage build of every binary the compose file runs, with
// the TLS libraries librdkafka needs at build and run time, running as a non-root user.
#[test]
fn dockerfile_builds_what_compose_runs() {
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].contains("rust:") && froms[0].contains(" AS builder"));
    assert!(froms[1].contains("debian:") && froms[1].contains("-slim"));
    assert!(dockerfile.contains("cargo build --release --locked --workspace --bins"));
    assert!(dockerfile.contains("libssl-dev") && dockerfile.contains("libssl3"));
    assert!(dockerfile.contains("ca-certificates"));
    let user = dockerfile
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root"), "{user}");

    let compose = yaml(COMPOSE);
    for (name, svc) in compose["services"].as_object().expect("services") {
        if svc.get("build").is_none() {
            continue;
        }
        let binary = strings(svc.get("command"))
            .into_iter()
            .next()
            .unwrap_or_default();
        if binary == "sleep" {
            continue;
        }
        assert!(
            dockerfile.contains(&format!(" {binary} "))
                || dockerfile.contains(&format!(" {binary};")),
            "{name}: the Dockerfile does not copy {binary}"
        );
    }
}
