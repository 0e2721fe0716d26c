//! From [`RawConfig`] to [`Config`]: every check, every default, every secret and PEM file.
//!
//! Validation never stops at the first problem: each check records its error (key path,
//! problem, expectation, example) and goes on with a placeholder, so the operator sees the
//! whole list at once. It reads local files and environment variables only; it never
//! resolves a host name or opens a socket.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::SecretString;
use url::Url;

use super::LoadOptions;
use super::error::{ConfigError, ConfigErrors, ConfigWarning};
use super::raw::*;
use super::secret::{EnvSource, SecretSource, resolve_path};
use super::settings::*;
use crate::cloud::{CloudEndpoints, CloudPreset, TokenEndpoint};

/// Default `requests_per_minute` per tenant (Microsoft's documented publisher quota).
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 2000;
/// Longest `sweep_horizon_hours`: the API keeps content for 7 days.
pub const MAX_SWEEP_HORIZON_HOURS: i64 = 168;
/// Default Devo tag of health records.
pub const DEFAULT_HEALTH_TAG: &str = "my.app.m365devo.health";
/// Default tag for records without a `Workload`.
pub const DEFAULT_FALLBACK_TAG: &str = "cloud.office365.management.unknown";

const GUID_EXAMPLE: &str = "\"0f3b8c2e-4d5a-4b6c-9e7f-1a2b3c4d5e6f\"";
const TIME_EXAMPLE: &str = "\"2026-11-20T00:00:00Z\"";
/// Warn when a certificate expires within this many days.
const CERT_EXPIRY_WARNING_DAYS: i64 = 30;

impl RawConfig {
    /// Checks everything and builds the typed configuration. Relative paths are taken
    /// relative to `base_dir`. All problems are returned together.
    pub fn validate(&self, base_dir: &Path, options: &LoadOptions) -> Result<Config, ConfigErrors> {
        let mut c = Checker {
            base_dir,
            env: &options.env,
            now: options.now.unwrap_or_else(Utc::now),
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let consumer_raw = self.consumer.as_ref();
        let defaults = StreamDefaults {
            bloom_filter_size: c.int(
                "consumer.bloom_filter_size",
                consumer_raw.and_then(|r| r.bloom_filter_size),
                1_000_000,
                1,
                i64::MAX,
                "1000000",
            ) as u64,
            bloom_filter_buffer_size: c.int(
                "consumer.bloom_filter_buffer_size",
                consumer_raw.and_then(|r| r.bloom_filter_buffer_size),
                2,
                1,
                i64::MAX,
                "2",
            ) as u64,
        };

        if self.globals.is_some() {
            c.warn("globals", "Devo on-premise section ignored by m365-devo");
        }
        if self.outputs.is_some() {
            c.warn(
                "outputs",
                "Devo on-premise section ignored; configure the `devo` section",
            );
        }

        let tenants = c.tenants(self, &defaults, options.require_tenants);
        let kafka = c.kafka(self.kafka.as_ref());
        let devo = self.devo.as_ref().and_then(|d| c.devo(d));
        let producer = c.producer(self.producer.as_ref());
        let consumer = c.consumer(consumer_raw);
        let uri_retry = c.uri_retry(self.uri_retry.as_ref());
        let metrics = c.metrics(self.metrics.as_ref());
        let health = c.health(self.health.as_ref());
        let logging = c.logging(self.logging.as_ref());

        if !c.errors.is_empty() {
            return Err(ConfigErrors {
                source_name: String::from("<inline>"),
                errors: c.errors,
            });
        }
        Ok(Config {
            tenants,
            kafka,
            devo,
            producer,
            consumer,
            uri_retry,
            metrics,
            health,
            logging,
            warnings: c.warnings,
        })
    }
}

struct StreamDefaults {
    bloom_filter_size: u64,
    bloom_filter_buffer_size: u64,
}

/// One service's settings, whichever section they came from.
struct ServiceView<'a> {
    start_time_in_utc: Option<&'a str>,
    override_tag: Option<&'a str>,
    bloom_filter_size: Option<i64>,
    bloom_filter_buffer_size: Option<i64>,
}

impl<'a> From<&'a RawDevoService> for ServiceView<'a> {
    fn from(s: &'a RawDevoService) -> Self {
        ServiceView {
            start_time_in_utc: s.start_time_in_utc.as_deref(),
            override_tag: s.override_tag.as_deref(),
            bloom_filter_size: s.override_bloom_filter_size,
            bloom_filter_buffer_size: s.override_bloom_filter_buffer_size,
        }
    }
}

impl<'a> From<&'a RawTenantService> for ServiceView<'a> {
    fn from(s: &'a RawTenantService) -> Self {
        ServiceView {
            start_time_in_utc: s.start_time_in_utc.as_deref(),
            override_tag: s.override_tag.as_deref(),
            bloom_filter_size: s.override_bloom_filter_size,
            bloom_filter_buffer_size: s.override_bloom_filter_buffer_size,
        }
    }
}

/// Which streams a tenant wants, before per-stream checks.
struct StreamsWanted<'a> {
    /// Path of the services map (or `content_types`), for messages.
    path: String,
    services: Vec<(ContentType, Option<ServiceView<'a>>)>,
    uri_retry: bool,
}

struct Checker<'a> {
    base_dir: &'a Path,
    env: &'a EnvSource,
    now: DateTime<Utc>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

impl Checker<'_> {
    fn err(
        &mut self,
        path: impl Into<String>,
        problem: impl Into<String>,
        expected: impl Into<String>,
        example: impl Into<String>,
    ) {
        self.errors
            .push(ConfigError::new(path, problem, expected, example));
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            path: path.into(),
            message: message.into(),
        });
    }

    // ----- scalar helpers ---------------------------------------------------------------

    /// `value` or `default`, checked against `lo..=hi`; out of range records an error and
    /// yields the default.
    fn int(
        &mut self,
        path: &str,
        value: Option<i64>,
        default: i64,
        lo: i64,
        hi: i64,
        example: &str,
    ) -> i64 {
        match value {
            None => default,
            Some(v) if (lo..=hi).contains(&v) => v,
            Some(_) => {
                let expected = if hi == i64::MAX {
                    format!("a whole number of at least {lo}")
                } else {
                    format!("a whole number from {lo} to {hi}")
                };
                self.err(path, "value out of range", expected, example);
                default
            }
        }
    }

    fn required_text<'s>(
        &mut self,
        path: &str,
        value: Option<&'s str>,
        expected: &str,
        example: &str,
    ) -> Option<&'s str> {
        match value.map(str::trim) {
            Some(v) if !v.is_empty() => Some(v),
            Some(_) => {
                self.err(path, "empty value", expected, example);
                None
            }
            None => {
                self.err(path, "missing", expected, example);
                None
            }
        }
    }

    /// A GUID in its 8-4-4-4-12 form, lower-cased.
    fn guid(&mut self, path: &str, value: Option<&str>, what: &str) -> Option<String> {
        let expected = format!("the {what} as a GUID (8-4-4-4-12 hexadecimal digits)");
        let v = self.required_text(path, value, &expected, GUID_EXAMPLE)?;
        if is_guid(v) {
            Some(v.to_ascii_lowercase())
        } else {
            // The value is not echoed: a secret pasted into the wrong field must not leak.
            self.err(
                path,
                format!("not a GUID ({} characters)", v.chars().count()),
                expected,
                GUID_EXAMPLE,
            );
            None
        }
    }

    /// RFC 3339 time (or one without zone, taken as UTC), not in the future.
    fn start_time(&mut self, path: &str, value: Option<&str>) -> Option<DateTime<Utc>> {
        let v = value?.trim();
        let parsed = DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f")
                    .ok()
                    .map(|n| n.and_utc())
            });
        let expected = "an RFC 3339 UTC time, not in the future";
        match parsed {
            None => {
                self.err(path, "not a valid time", expected, TIME_EXAMPLE);
                None
            }
            Some(t) if t > self.now => {
                self.err(path, "time is in the future", expected, TIME_EXAMPLE);
                None
            }
            Some(t) => {
                if self.now - t > chrono::Duration::days(7) {
                    self.warn(
                        path,
                        "more than 7 days ago; the API keeps 7 days, so collection starts at the oldest available content",
                    );
                }
                Some(t)
            }
        }
    }

    /// A Devo tag: dotted words, no blanks, no `:`.
    fn tag(&mut self, path: &str, value: Option<&str>) -> Option<String> {
        let v = value?;
        let ok = !v.is_empty()
            && v.len() <= 512
            && v.chars().all(|c| c.is_ascii_graphic() && c != ':')
            && !v.starts_with('.')
            && !v.ends_with('.');
        if ok {
            Some(v.to_string())
        } else {
            self.err(
                path,
                "not a valid Devo tag",
                "dot-separated words without spaces or `:`",
                "\"my.app.office365.audit\"",
            );
            None
        }
    }

    fn secret(
        &mut self,
        path: &str,
        value: Option<&SecretSource>,
        example: &str,
    ) -> Option<SecretString> {
        match value {
            None => {
                self.err(
                    path,
                    "missing",
                    "a secret: inline text, {\"env\": \"VARIABLE\"} or {\"file\": \"/path\"}",
                    example,
                );
                None
            }
            Some(s) => match s.resolve(path, self.base_dir, self.env) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.errors.push(e);
                    None
                }
            },
        }
    }

    /// An `http(s)` URL; plain `http` only to a loopback host (tokens must not cross a
    /// network in clear).
    fn url(&mut self, path: &str, value: Option<&str>, example: &str) -> Option<Url> {
        let expected = "an https:// URL (http:// only for 127.0.0.1 or localhost)";
        let v = self.required_text(path, value, expected, example)?;
        match Url::parse(v) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => Some(u),
            Ok(u) if u.scheme() == "http" && is_loopback(&u) => Some(u),
            Ok(u) if u.scheme() == "http" => {
                self.err(path, "plain http to a non-loopback host", expected, example);
                None
            }
            _ => {
                self.err(path, "not a valid https URL", expected, example);
                None
            }
        }
    }

    fn read_file(
        &mut self,
        path: &str,
        file: &Path,
        what: &str,
        example: &str,
    ) -> Option<(PathBuf, String)> {
        let full = resolve_path(self.base_dir, file);
        match std::fs::read_to_string(&full) {
            Ok(text) => Some((full, text)),
            Err(e) => {
                let problem = if e.kind() == std::io::ErrorKind::NotFound {
                    format!("file {} not found", full.display())
                } else {
                    format!("cannot read file {}: {}", full.display(), e.kind())
                };
                self.err(path, problem, format!("a readable {what}"), example);
                None
            }
        }
    }

    /// A PEM file with at least one certificate; checks the first one's validity dates.
    fn cert_file(
        &mut self,
        path: &str,
        file: &Path,
        example: &str,
    ) -> Option<(PathBuf, String, Vec<u8>)> {
        let (full, text) = self.read_file(path, file, "PEM certificate file", example)?;
        let mut certs = CertificateDer::pem_slice_iter(text.as_bytes());
        match certs.next() {
            Some(Ok(first)) => {
                let der = first.as_ref().to_vec();
                self.cert_dates(path, &full, &der);
                Some((full, text, der))
            }
            _ => {
                self.err(
                    path,
                    format!("file {} holds no PEM certificate", full.display()),
                    "a PEM file starting with -----BEGIN CERTIFICATE-----",
                    example,
                );
                None
            }
        }
    }

    fn cert_dates(&mut self, path: &str, file: &Path, der: &[u8]) {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            self.err(
                path,
                format!("the certificate in {} cannot be parsed", file.display()),
                "an X.509 certificate in PEM form",
                "\"/etc/m365-devo/app.crt\"",
            );
            return;
        };
        let not_after = cert.validity().not_after.timestamp();
        let now = self.now.timestamp();
        if not_after < now {
            self.err(
                path,
                format!("the certificate in {} has expired", file.display()),
                "a certificate that is currently valid",
                "\"/etc/m365-devo/app.crt\"",
            );
        } else if not_after - now < CERT_EXPIRY_WARNING_DAYS * 86_400 {
            self.warn(
                path,
                format!(
                    "the certificate in {} expires in less than {CERT_EXPIRY_WARNING_DAYS} days",
                    file.display()
                ),
            );
        }
    }

    /// A PEM file with an unencrypted private key.
    fn key_file(
        &mut self,
        path: &str,
        file: &Path,
        example: &str,
    ) -> Option<(PathBuf, SecretString)> {
        let (full, text) = self.read_file(path, file, "PEM private key file", example)?;
        let text = SecretString::from(text);
        let body = secrecy::ExposeSecret::expose_secret(&text);
        if body.contains("ENCRYPTED PRIVATE KEY") || body.contains("Proc-Type: 4,ENCRYPTED") {
            self.err(
                path,
                format!("the private key in {} is encrypted", full.display()),
                "an unencrypted PEM private key (protect the file with permissions instead)",
                example,
            );
            return None;
        }
        if PrivateKeyDer::from_pem_slice(body.as_bytes()).is_err() {
            self.err(
                path,
                format!("file {} holds no PEM private key", full.display()),
                "a PEM file with -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----",
                example,
            );
            return None;
        }
        Some((full, text))
    }

    // ----- tenants ----------------------------------------------------------------------

    fn tenants(
        &mut self,
        raw: &RawConfig,
        defaults: &StreamDefaults,
        require: bool,
    ) -> Vec<TenantSettings> {
        let mut out = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        let devo = raw.inputs.as_ref().and_then(|i| i.office365.as_ref());
        if let Some(inputs) = &raw.inputs {
            for name in inputs.other.keys() {
                self.warn(
                    format!("inputs.{name}"),
                    "not a Microsoft 365 input; ignored",
                );
            }
        }
        if let Some(input) = devo {
            if input.enabled == Some(false) {
                self.warn("inputs.office365.enabled", "input disabled; not collected");
            } else if let Some(t) = self.devo_tenant(input, defaults) {
                seen.insert(t.tenant_id.clone(), t.key_path.clone());
                out.push(t);
            }
        }
        for (i, t) in raw.tenants.iter().flatten().enumerate() {
            let path = format!("tenants[{i}]");
            if t.enabled == Some(false) {
                self.warn(format!("{path}.enabled"), "tenant disabled; not collected");
                continue;
            }
            if let Some(t) = self.tenant(&path, t, defaults) {
                if let Some(first) = seen.get(&t.tenant_id) {
                    self.err(
                        format!("{path}.tenant_id"),
                        format!("duplicate tenant id, already configured at {first}"),
                        "each tenant once (merge their services into one entry)",
                        GUID_EXAMPLE,
                    );
                    continue;
                }
                seen.insert(t.tenant_id.clone(), path);
                out.push(t);
            }
        }
        let declared = devo.is_some() || raw.tenants.as_ref().is_some_and(|t| !t.is_empty());
        if require && !declared {
            self.err(
                "tenants",
                "no tenant configured",
                "inputs.office365 (Devo's parameters) or at least one entry in tenants",
                "{\"inputs\": {\"office365\": {\"credentials\": {\"tenant_id\": …, \"client_id\": …, \"client_secret\": …}}}}",
            );
        } else if require && out.is_empty() && self.errors.is_empty() {
            self.err(
                "tenants",
                "every tenant is disabled",
                "at least one enabled tenant",
                "\"enabled\": true",
            );
        }
        out
    }

    fn devo_tenant(
        &mut self,
        input: &RawDevoInput,
        defaults: &StreamDefaults,
    ) -> Option<TenantSettings> {
        let base = "inputs.office365";
        for k in input.unknown.keys() {
            self.warn(format!("{base}.{k}"), "unknown Devo parameter; ignored");
        }
        let (tenant_id, client_id, secret) = match &input.credentials {
            None => {
                self.err(
                    format!("{base}.credentials"),
                    "missing",
                    "the Azure application credentials",
                    "{\"client_id\": \"…\", \"tenant_id\": \"…\", \"client_secret\": \"…\"}",
                );
                (None, None, None)
            }
            Some(cr) => {
                for k in cr.unknown.keys() {
                    self.warn(
                        format!("{base}.credentials.{k}"),
                        "unknown Devo parameter; ignored",
                    );
                }
                (
                    self.guid(
                        &format!("{base}.credentials.tenant_id"),
                        cr.tenant_id.as_deref(),
                        "directory (tenant) id",
                    ),
                    self.guid(
                        &format!("{base}.credentials.client_id"),
                        cr.client_id.as_deref(),
                        "application (client) id",
                    ),
                    self.secret(
                        &format!("{base}.credentials.client_secret"),
                        cr.client_secret.as_ref(),
                        "{\"env\": \"M365_CLIENT_SECRET\"}",
                    ),
                )
            }
        };
        let wanted = match &input.services {
            None => all_services(format!("{base}.services")),
            Some(s) => {
                for k in s.unknown.keys() {
                    self.warn(
                        format!("{base}.services.{k}"),
                        "unknown Devo service; ignored",
                    );
                }
                for (name, svc) in [
                    ("azure_active_directory", &s.azure_active_directory),
                    ("exchange", &s.exchange),
                    ("sharepoint", &s.sharepoint),
                    ("general_audit", &s.general_audit),
                    ("dlp", &s.dlp),
                    ("uri_retry", &s.uri_retry),
                ] {
                    for k in svc.iter().flat_map(|v| v.unknown.keys()) {
                        self.warn(
                            format!("{base}.services.{name}.{k}"),
                            "unknown Devo parameter; ignored",
                        );
                    }
                }
                StreamsWanted {
                    path: format!("{base}.services"),
                    services: [
                        (ContentType::AzureActiveDirectory, &s.azure_active_directory),
                        (ContentType::Exchange, &s.exchange),
                        (ContentType::SharePoint, &s.sharepoint),
                        (ContentType::General, &s.general_audit),
                        (ContentType::DlpAll, &s.dlp),
                    ]
                    .into_iter()
                    .filter_map(|(ct, svc)| svc.as_ref().map(|v| (ct, Some(ServiceView::from(v)))))
                    .collect(),
                    uri_retry: s.uri_retry.is_some(),
                }
            }
        };
        let streams = self.streams(wanted, None, defaults);
        let tenant_id = tenant_id?;
        let (streams, uri_retry) = streams?;
        Some(TenantSettings {
            name: String::from("office365"),
            key_path: base.to_string(),
            client_id: client_id?,
            credential: Credential::ClientSecret(secret?),
            token_endpoint: TokenEndpoint::V2,
            cloud: Some(CloudPreset::Commercial),
            endpoints: CloudPreset::Commercial.endpoints(),
            ca_pem: None,
            publisher_identifier: tenant_id.clone(),
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
            streams,
            uri_retry,
            tenant_id,
        })
    }

    fn tenant(
        &mut self,
        base: &str,
        t: &RawTenant,
        defaults: &StreamDefaults,
    ) -> Option<TenantSettings> {
        let tenant_id = self.guid(
            &format!("{base}.tenant_id"),
            t.tenant_id.as_deref(),
            "directory (tenant) id",
        );
        let client_id = self.guid(
            &format!("{base}.client_id"),
            t.client_id.as_deref(),
            "application (client) id",
        );
        let credential = match &t.auth {
            None => {
                self.err(
                    format!("{base}.auth"),
                    "missing",
                    "how the application authenticates: type client_secret or certificate",
                    "{\"type\": \"client_secret\", \"client_secret\": {\"env\": \"M365_CLIENT_SECRET\"}}",
                );
                None
            }
            Some(a) => self.auth(&format!("{base}.auth"), a),
        };
        let token_endpoint = match t.token_endpoint.as_deref() {
            None => TokenEndpoint::V2,
            Some(v) => TokenEndpoint::from_name(v).unwrap_or_else(|| {
                self.err(
                    format!("{base}.token_endpoint"),
                    "unknown token endpoint",
                    "v1 or v2",
                    "\"v2\"",
                );
                TokenEndpoint::V2
            }),
        };
        let (cloud, endpoints) = self.cloud(&format!("{base}.cloud"), t.cloud.as_ref());
        let ca_pem = t.ca_file.as_ref().and_then(|f| {
            self.cert_file(
                &format!("{base}.ca_file"),
                f,
                "\"/etc/m365-devo/simulator-ca.pem\"",
            )
            .map(|(_, pem, _)| pem)
        });
        let publisher_identifier = match t.publisher_identifier.as_deref() {
            Some(p) if p.trim().is_empty() || p.len() > 256 => {
                self.err(
                    format!("{base}.publisher_identifier"),
                    "empty or longer than 256 characters",
                    "an identifier of this collector, usually the tenant id",
                    GUID_EXAMPLE,
                );
                None
            }
            Some(p) => Some(p.trim().to_string()),
            None => None,
        };
        let rpm = self.int(
            &format!("{base}.requests_per_minute"),
            t.requests_per_minute,
            i64::from(DEFAULT_REQUESTS_PER_MINUTE),
            1,
            60_000,
            "2000",
        ) as u32;
        let tenant_start = t.start_time_in_utc.as_deref();
        if tenant_start.is_some() {
            // Checked once here; streams inherit it.
            self.start_time(&format!("{base}.start_time_in_utc"), tenant_start);
        }
        let wanted = match (&t.services, &t.content_types) {
            (Some(_), Some(_)) => {
                self.err(
                    format!("{base}.content_types"),
                    "both services and content_types are given",
                    "one of the two",
                    "\"content_types\": [\"Audit.Exchange\", \"Audit.SharePoint\"]",
                );
                None
            }
            (None, None) => Some(all_services(format!("{base}.services"))),
            (Some(s), None) => Some(StreamsWanted {
                path: format!("{base}.services"),
                services: [
                    (ContentType::AzureActiveDirectory, &s.azure_active_directory),
                    (ContentType::Exchange, &s.exchange),
                    (ContentType::SharePoint, &s.sharepoint),
                    (ContentType::General, &s.general_audit),
                    (ContentType::DlpAll, &s.dlp),
                ]
                .into_iter()
                .filter_map(|(ct, svc)| svc.as_ref().map(|v| (ct, Some(ServiceView::from(v)))))
                .collect(),
                uri_retry: s.uri_retry.is_some(),
            }),
            (None, Some(list)) => self.content_types(&format!("{base}.content_types"), list),
        };
        let streams = wanted.and_then(|w| self.streams(w, tenant_start, defaults));
        let tenant_id = tenant_id?;
        let (streams, uri_retry) = streams?;
        Some(TenantSettings {
            name: t.name.clone().unwrap_or_else(|| tenant_id.clone()),
            key_path: base.to_string(),
            client_id: client_id?,
            credential: credential?,
            token_endpoint,
            cloud,
            endpoints: endpoints?,
            ca_pem,
            publisher_identifier: publisher_identifier.unwrap_or_else(|| tenant_id.clone()),
            requests_per_minute: rpm,
            streams,
            uri_retry,
            tenant_id,
        })
    }

    fn content_types<'s>(&mut self, path: &str, list: &[String]) -> Option<StreamsWanted<'s>> {
        let mut services: Vec<(ContentType, Option<ServiceView<'s>>)> = Vec::new();
        let mut ok = true;
        for (i, name) in list.iter().enumerate() {
            match ContentType::from_name(name) {
                Some(ct) if services.iter().any(|(c, _)| *c == ct) => {
                    self.err(
                        format!("{path}[{i}]"),
                        "listed twice",
                        "each content type once",
                        "\"Audit.Exchange\"",
                    );
                    ok = false;
                }
                Some(ct) => services.push((ct, None)),
                None => {
                    self.err(
                        format!("{path}[{i}]"),
                        "unknown content type",
                        "Audit.AzureActiveDirectory, Audit.Exchange, Audit.SharePoint, Audit.General or DLP.All",
                        "\"Audit.Exchange\"",
                    );
                    ok = false;
                }
            }
        }
        services.sort_by_key(|(c, _)| *c);
        ok.then(|| StreamsWanted {
            path: path.to_string(),
            services,
            uri_retry: true,
        })
    }

    /// Builds the streams; `None` if any of them is invalid or none is enabled.
    fn streams(
        &mut self,
        wanted: StreamsWanted<'_>,
        tenant_start: Option<&str>,
        defaults: &StreamDefaults,
    ) -> Option<(Vec<StreamSettings>, bool)> {
        if wanted.services.is_empty() {
            self.err(
                wanted.path.as_str(),
                "no content type enabled",
                "at least one of azure_active_directory, exchange, sharepoint, general_audit, dlp",
                "{\"exchange\": {}, \"uri_retry\": {}}",
            );
            return None;
        }
        if !wanted.uri_retry {
            self.warn(
                wanted.path.as_str(),
                "uri_retry is not enabled: failed content blobs go straight to the dead topic",
            );
        }
        let before = self.errors.len();
        let tenant_start = tenant_start.and_then(|s| parse_quiet(s, self.now));
        let mut out = Vec::new();
        for (ct, svc) in wanted.services {
            let p = format!("{}.{}", wanted.path, ct.service_name());
            let svc = svc.unwrap_or(ServiceView {
                start_time_in_utc: None,
                override_tag: None,
                bloom_filter_size: None,
                bloom_filter_buffer_size: None,
            });
            let start = match svc.start_time_in_utc {
                Some(s) => self.start_time(&format!("{p}.start_time_in_utc"), Some(s)),
                None => tenant_start,
            };
            let override_tag = self.tag(&format!("{p}.override_tag"), svc.override_tag);
            let size = self.int(
                &format!("{p}.override_bloom_filter_size"),
                svc.bloom_filter_size,
                defaults.bloom_filter_size as i64,
                1,
                i64::MAX,
                "1000000",
            );
            let buffer = self.int(
                &format!("{p}.override_bloom_filter_buffer_size"),
                svc.bloom_filter_buffer_size,
                defaults.bloom_filter_buffer_size as i64,
                1,
                i64::MAX,
                "2",
            );
            out.push(StreamSettings {
                content_type: ct,
                override_tag,
                bloom_filter_size: size as u64,
                bloom_filter_buffer_size: buffer as u64,
                start_time: start,
            });
        }
        (self.errors.len() == before).then_some((out, wanted.uri_retry))
    }

    fn auth(&mut self, base: &str, a: &RawAuth) -> Option<Credential> {
        let kind = self.required_text(
            &format!("{base}.type"),
            a.kind.as_deref(),
            "client_secret or certificate",
            "\"client_secret\"",
        )?;
        match kind {
            "client_secret" => {
                for (k, set) in [
                    ("cert_file", a.cert_file.is_some()),
                    ("key_file", a.key_file.is_some()),
                    ("pfx_file", a.pfx_file.is_some()),
                    ("pfx_password", a.pfx_password.is_some()),
                    ("alg", a.alg.is_some()),
                ] {
                    if set {
                        self.warn(
                            format!("{base}.{k}"),
                            "not used with type client_secret; ignored",
                        );
                    }
                }
                self.secret(
                    &format!("{base}.client_secret"),
                    a.client_secret.as_ref(),
                    "{\"env\": \"M365_CLIENT_SECRET\"}",
                )
                .map(Credential::ClientSecret)
            }
            "certificate" => self.certificate(base, a),
            _ => {
                self.err(
                    format!("{base}.type"),
                    "unknown authentication type",
                    "client_secret or certificate",
                    "\"certificate\"",
                );
                None
            }
        }
    }

    fn certificate(&mut self, base: &str, a: &RawAuth) -> Option<Credential> {
        if a.client_secret.is_some() {
            self.warn(
                format!("{base}.client_secret"),
                "not used with type certificate; ignored",
            );
        }
        let alg = match a.alg.as_deref().map(|s| s.trim().to_ascii_uppercase()) {
            None => Some(Alg::Rs256),
            Some(s) if s == "RS256" => Some(Alg::Rs256),
            Some(s) if s == "PS256" => Some(Alg::Ps256),
            Some(_) => {
                self.err(
                    format!("{base}.alg"),
                    "unknown signature algorithm",
                    "RS256 or PS256",
                    "\"RS256\"",
                );
                None
            }
        };
        let x5t = a.x5t.unwrap_or(true);
        let x5t_s256 = a.x5t_s256.unwrap_or(true);
        if !x5t && !x5t_s256 {
            self.err(
                format!("{base}.x5t"),
                "both x5t and x5t_s256 are false",
                "at least one thumbprint header so Entra ID can find the certificate",
                "\"x5t\": true",
            );
        }
        if let Some(pfx) = &a.pfx_file {
            self.err(
                format!("{base}.pfx_file"),
                format!("PKCS#12 (.pfx) input is not supported yet ({})", pfx.display()),
                "cert_file and key_file (PEM); convert with `openssl pkcs12 -in app.pfx -nokeys -out app.crt` and `-nocerts -nodes -out app.key`",
                "\"cert_file\": \"/etc/m365-devo/app.crt\", \"key_file\": \"/etc/m365-devo/app.key\"",
            );
            return None;
        }
        let cert = match &a.cert_file {
            None => {
                self.err(
                    format!("{base}.cert_file"),
                    "missing",
                    "the PEM certificate registered on the application",
                    "\"/etc/m365-devo/app.crt\"",
                );
                None
            }
            Some(f) => {
                let path = format!("{base}.cert_file");
                let cert = self.cert_file(&path, f, "\"/etc/m365-devo/app.crt\"");
                if let Some((file, _, der)) = &cert {
                    self.rsa_check(&path, file, der);
                }
                cert
            }
        };
        let key = match &a.key_file {
            None => {
                self.err(
                    format!("{base}.key_file"),
                    "missing",
                    "the certificate's PEM private key",
                    "\"/etc/m365-devo/app.key\"",
                );
                None
            }
            Some(f) => self.key_file(&format!("{base}.key_file"), f, "\"/etc/m365-devo/app.key\""),
        };
        Some(Credential::Certificate {
            cert_pem: cert?.1,
            key_pem: key?.1,
            alg: alg?,
            x5t,
            x5t_s256,
        })
        .filter(|_| x5t || x5t_s256)
    }

    /// Entra ID requires RSA keys of at least 2048 bits for client assertions.
    fn rsa_check(&mut self, path: &str, file: &Path, der: &[u8]) {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return; // Reported by cert_dates.
        };
        match cert.public_key().parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => {}
            Ok(x509_parser::public_key::PublicKey::RSA(_)) => self.err(
                path,
                format!(
                    "the RSA key of {} is shorter than 2048 bits",
                    file.display()
                ),
                "an RSA certificate of at least 2048 bits",
                "openssl req -x509 -newkey rsa:2048 …",
            ),
            _ => self.err(
                path,
                format!(
                    "the certificate in {} does not hold an RSA key",
                    file.display()
                ),
                "an RSA certificate (RS256/PS256 assertions)",
                "openssl req -x509 -newkey rsa:2048 …",
            ),
        }
    }

    fn cloud(
        &mut self,
        path: &str,
        raw: Option<&RawCloud>,
    ) -> (Option<CloudPreset>, Option<CloudEndpoints>) {
        match raw {
            None => (
                Some(CloudPreset::Commercial),
                Some(CloudPreset::Commercial.endpoints()),
            ),
            Some(RawCloud::Preset(name)) => match CloudPreset::from_name(name) {
                Some(p) => (Some(p), Some(p.endpoints())),
                None => {
                    self.err(
                        path,
                        "unknown cloud",
                        "commercial, gcc, gcc_high, dod, or {\"api_base\": …, \"authority_base\": …}",
                        "\"gcc_high\"",
                    );
                    (None, None)
                }
            },
            Some(RawCloud::Explicit(h)) => {
                let api = self.url(
                    &format!("{path}.api_base"),
                    h.api_base.as_deref(),
                    "\"https://manage.office.com\"",
                );
                let auth = self.url(
                    &format!("{path}.authority_base"),
                    h.authority_base.as_deref(),
                    "\"https://login.microsoftonline.com\"",
                );
                let resource = match h.resource.as_deref().map(str::trim) {
                    Some("") => {
                        self.err(
                            format!("{path}.resource"),
                            "empty value",
                            "the token audience",
                            "\"https://manage.office.com\"",
                        );
                        None
                    }
                    Some(r) => Some(r.trim_end_matches('/').to_string()),
                    None => api.as_ref().map(|u| u.origin().ascii_serialization()),
                };
                match (api, auth, resource) {
                    (Some(api_base), Some(authority_base), Some(resource)) => (
                        None,
                        Some(CloudEndpoints {
                            api_base,
                            authority_base,
                            resource,
                        }),
                    ),
                    _ => (None, None),
                }
            }
        }
    }

    // ----- other sections ---------------------------------------------------------------

    fn kafka(&mut self, raw: Option<&RawKafka>) -> KafkaSettings {
        let empty = RawKafka::default();
        let k = raw.unwrap_or(&empty);
        let bootstrap_servers = k.bootstrap_servers.as_deref().and_then(|s| {
            let ok = !s.trim().is_empty()
                && s.split(',').all(|hp| {
                    let hp = hp.trim();
                    hp.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                    })
                });
            if ok {
                Some(s.split(',').map(str::trim).collect::<Vec<_>>().join(","))
            } else {
                self.err(
                    "kafka.bootstrap_servers",
                    "not a list of host:port",
                    "host:port pairs separated by commas (omit the key for the embedded broker)",
                    "\"kafka-1:9092,kafka-2:9092\"",
                );
                None
            }
        });
        let topic_prefix = k
            .topic_prefix
            .clone()
            .unwrap_or_else(|| String::from("m365"));
        let valid_prefix = !topic_prefix.is_empty()
            && topic_prefix.len() <= 200
            && topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid_prefix {
            self.err(
                "kafka.topic_prefix",
                "not a valid Kafka topic name prefix",
                "1 to 200 characters from a-z, A-Z, 0-9, '.', '_', '-'",
                "\"m365\"",
            );
        }
        let partitions = self.int("kafka.partitions", k.partitions, 6, 1, 10_000, "6") as i32;
        let replication_factor = k.replication_factor.map(|_| {
            self.int(
                "kafka.replication_factor",
                k.replication_factor,
                1,
                1,
                32_767,
                "3",
            ) as i32
        });
        let transactions = match k.transactions.as_deref() {
            None | Some("auto") => Transactions::Auto,
            Some("on") => Transactions::On,
            Some("off") => Transactions::Off,
            Some(_) => {
                self.err(
                    "kafka.transactions",
                    "unknown value",
                    "auto, on or off",
                    "\"auto\"",
                );
                Transactions::Auto
            }
        };
        let mut entries = BTreeMap::new();
        for (key, value) in k.properties.iter().flatten() {
            let path = format!("kafka.properties.{key}");
            if key.trim().is_empty() {
                self.err(
                    path,
                    "empty property name",
                    "a librdkafka property name",
                    "\"security.protocol\"",
                );
                continue;
            }
            if key == "bootstrap.servers" || key == "metadata.broker.list" {
                self.err(
                    path,
                    "brokers are set with kafka.bootstrap_servers",
                    "kafka.bootstrap_servers instead of this property",
                    "\"bootstrap_servers\": \"kafka-1:9092\"",
                );
                continue;
            }
            // A value from env/file, or under a key that smells of a secret, is never printed.
            let sensitive = KafkaProperties::is_sensitive_key(key)
                || !matches!(value.source, SecretSource::Inline(_));
            match value.source.resolve(&path, self.base_dir, self.env) {
                Ok(v) => {
                    entries.insert(key.clone(), (v, sensitive));
                }
                Err(e) => self.errors.push(e),
            }
        }
        KafkaSettings {
            bootstrap_servers,
            topic_prefix,
            partitions,
            replication_factor,
            transactions,
            properties: KafkaProperties { entries },
        }
    }

    fn devo(&mut self, d: &RawDevoOutput) -> Option<DevoSettings> {
        const TYPES: &str = "devo_tls, devo_http, tcp, file or stdout";
        let kind = self.required_text("devo.type", d.kind.as_deref(), TYPES, "\"devo_tls\"")?;
        let port = self.int("devo.port", d.port, 443, 1, 65_535, "443") as u16;
        let before = self.errors.len();
        let used: &[&str] = match kind {
            "devo_tls" => &[
                "address",
                "port",
                "cert_file",
                "key_file",
                "chain_file",
                "pkcs12_file",
                "pkcs12_password",
                "sni",
                "zip",
            ],
            "devo_http" => &["endpoint", "domain", "token"],
            "tcp" => &["address", "port", "zip"],
            "file" => &["path"],
            "stdout" => &[],
            _ => {
                self.err("devo.type", "unknown output type", TYPES, "\"devo_tls\"");
                return None;
            }
        };
        for (key, set) in [
            ("address", d.address.is_some()),
            ("port", d.port.is_some()),
            ("cert_file", d.cert_file.is_some()),
            ("key_file", d.key_file.is_some()),
            ("chain_file", d.chain_file.is_some()),
            ("pkcs12_file", d.pkcs12_file.is_some()),
            ("pkcs12_password", d.pkcs12_password.is_some()),
            ("sni", d.sni.is_some()),
            ("zip", d.zip.is_some()),
            ("endpoint", d.endpoint.is_some()),
            ("domain", d.domain.is_some()),
            ("token", d.token.is_some()),
            ("path", d.path.is_some()),
        ] {
            if set && !used.contains(&key) {
                self.warn(
                    format!("devo.{key}"),
                    format!("not used by type {kind}; ignored"),
                );
            }
        }
        let address_example = "\"collector-eu.devo.io\"";
        let output = match kind {
            "devo_tls" => {
                let address = self.host("devo.address", d.address.as_deref(), address_example);
                let tls = self.devo_tls_files(d);
                let sni = match d.sni.as_deref() {
                    Some(s) if s.trim().is_empty() => {
                        self.err("devo.sni", "empty value", "a server name", address_example);
                        None
                    }
                    Some(s) => Some(s.trim().to_string()),
                    None => address.clone(),
                };
                match (address, tls, sni) {
                    (Some(address), Some(tls), Some(sni)) => Some(Output::DevoTls {
                        address,
                        port,
                        sni,
                        tls,
                    }),
                    _ => None,
                }
            }
            "devo_http" => {
                let endpoint = self.url(
                    "devo.endpoint",
                    d.endpoint.as_deref(),
                    "\"https://http-eu.devo.io\"",
                );
                let domain = self
                    .required_text(
                        "devo.domain",
                        d.domain.as_deref(),
                        "the Devo domain name",
                        "\"mycompany\"",
                    )
                    .map(str::to_string);
                let token = match &d.token {
                    None => {
                        self.err(
                            "devo.token",
                            "missing: devo_http needs an ingestion token",
                            "the HTTP ingestion token (Administration → Credentials → Authentication tokens)",
                            "{\"env\": \"DEVO_HTTP_TOKEN\"}",
                        );
                        None
                    }
                    Some(t) => self.secret("devo.token", Some(t), "{\"env\": \"DEVO_HTTP_TOKEN\"}"),
                };
                match (endpoint, domain, token) {
                    (Some(endpoint), Some(domain), Some(token)) => Some(Output::DevoHttp {
                        endpoint,
                        domain,
                        token,
                    }),
                    _ => None,
                }
            }
            "tcp" => self
                .host("devo.address", d.address.as_deref(), "\"relay.internal\"")
                .map(|address| Output::Tcp { address, port }),
            "file" => match &d.path {
                None => {
                    self.err(
                        "devo.path",
                        "missing",
                        "the file lines are appended to",
                        "\"/var/log/m365-devo/out.log\"",
                    );
                    None
                }
                Some(p) => {
                    let full = resolve_path(self.base_dir, p);
                    let parent_ok = full
                        .parent()
                        .is_none_or(|dir| dir.as_os_str().is_empty() || dir.is_dir());
                    if parent_ok {
                        Some(Output::File { path: full })
                    } else {
                        self.err(
                            "devo.path",
                            format!("folder of {} does not exist", full.display()),
                            "a file in an existing folder",
                            "\"/var/log/m365-devo/out.log\"",
                        );
                        None
                    }
                }
            },
            _ => Some(Output::Stdout),
        };
        let facility = self.int("devo.facility", d.facility, 1, 0, 23, "1") as u8;
        let severity = self.int("devo.severity", d.severity, 6, 0, 7, "6") as u8;
        let date_style = match d.date_style.as_deref() {
            None | Some("devo_sdk") => DateStyle::DevoSdk,
            Some("rfc3164") => DateStyle::Rfc3164,
            Some("rfc3339") => DateStyle::Rfc3339,
            Some(_) => {
                self.err(
                    "devo.date_style",
                    "unknown date style",
                    "devo_sdk, rfc3164 or rfc3339",
                    "\"devo_sdk\"",
                );
                DateStyle::DevoSdk
            }
        };
        let hostname = match d.hostname.as_deref() {
            Some(h) if h.is_empty() || !h.chars().all(|c| c.is_ascii_graphic()) => {
                self.err(
                    "devo.hostname",
                    "empty or contains spaces",
                    "a host name without spaces (it separates syslog fields)",
                    "\"m365-collector-1\"",
                );
                None
            }
            h => h.map(str::to_string),
        };
        let connections = self.int("devo.connections", d.connections, 1, 1, 64, "2") as u32;
        let batch_max_bytes = self.int(
            "devo.batch_max_bytes",
            d.batch_max_bytes,
            1 << 20,
            1024,
            32 * (1 << 20),
            "1048576",
        ) as u64;
        let batch_max_wait_ms = self.int(
            "devo.batch_max_wait_ms",
            d.batch_max_wait_ms,
            1000,
            1,
            600_000,
            "1000",
        ) as u64;
        let timeout_secs = self.int("devo.timeout_secs", d.timeout_secs, 30, 1, 600, "30") as u64;
        let idle_reconnect_secs = self.int(
            "devo.idle_reconnect_secs",
            d.idle_reconnect_secs,
            25,
            1,
            3600,
            "25",
        ) as u64;
        let max_connection_age_secs = self.int(
            "devo.max_connection_age_secs",
            d.max_connection_age_secs,
            3600,
            1,
            86_400,
            "3600",
        ) as u64;
        let max_held_mb =
            self.int("devo.max_held_mb", d.max_held_mb, 256, 16, 65_536, "256") as u64;
        if self.errors.len() != before {
            return None;
        }
        Some(DevoSettings {
            output: output?,
            line: LineFormat {
                hostname,
                facility,
                severity,
                date_style,
                multiline: d.multiline.unwrap_or(false),
                zip: d.zip.unwrap_or(false),
            },
            connections,
            batch_max_bytes,
            batch_max_wait_ms,
            timeout_secs,
            idle_reconnect_secs,
            max_connection_age_secs,
            max_held_mb,
        })
    }

    /// A host name or IP address (not resolved).
    fn host(&mut self, path: &str, value: Option<&str>, example: &str) -> Option<String> {
        let v = self.required_text(path, value, "a host name or IP address", example)?;
        let ok = v.parse::<IpAddr>().is_ok()
            || v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if ok {
            Some(v.to_string())
        } else {
            self.err(
                path,
                "not a host name or IP address",
                "a host name or IP address, without scheme or port",
                example,
            );
            None
        }
    }

    fn devo_tls_files(&mut self, d: &RawDevoOutput) -> Option<TlsMaterial> {
        if let Some(p) = &d.pkcs12_file {
            self.err(
                "devo.pkcs12_file",
                format!("PKCS#12 input is not supported yet ({})", p.display()),
                "cert_file, key_file and chain_file (PEM), as downloaded from Devo",
                "\"cert_file\": \"/etc/m365-devo/devo.crt\"",
            );
            return None;
        }
        let need = |c: &mut Self, key: &str, f: &Option<PathBuf>, what: &str, example: &str| {
            if f.is_none() {
                c.err(
                    format!("devo.{key}"),
                    "missing: devo_tls needs the domain's certificate, key and CA chain",
                    what.to_string(),
                    example.to_string(),
                );
            }
        };
        need(
            self,
            "cert_file",
            &d.cert_file,
            "the Devo domain certificate (PEM)",
            "\"/etc/m365-devo/devo.crt\"",
        );
        need(
            self,
            "key_file",
            &d.key_file,
            "the Devo domain private key (PEM)",
            "\"/etc/m365-devo/devo.key\"",
        );
        need(
            self,
            "chain_file",
            &d.chain_file,
            "the Devo CA chain (PEM)",
            "\"/etc/m365-devo/chain.crt\"",
        );
        let cert = d
            .cert_file
            .as_ref()
            .and_then(|f| self.cert_file("devo.cert_file", f, "\"/etc/m365-devo/devo.crt\""));
        let key = d
            .key_file
            .as_ref()
            .and_then(|f| self.key_file("devo.key_file", f, "\"/etc/m365-devo/devo.key\""));
        let chain = d
            .chain_file
            .as_ref()
            .and_then(|f| self.cert_file("devo.chain_file", f, "\"/etc/m365-devo/chain.crt\""));
        let (cert_file, cert_pem, _) = cert?;
        let (key_file, key_pem) = key?;
        let (chain_file, chain_pem, _) = chain?;
        Some(TlsMaterial {
            cert_file,
            cert_pem,
            key_file,
            key_pem,
            chain_file,
            chain_pem,
        })
    }

    fn producer(&mut self, raw: Option<&RawProducer>) -> ProducerSettings {
        let empty = RawProducer::default();
        let p = raw.unwrap_or(&empty);
        let session_ms = self.int(
            "producer.group_session_timeout_ms",
            p.group_session_timeout_ms,
            10_000,
            1_000,
            300_000,
            "10000",
        );
        let heartbeat_ms = self.int(
            "producer.group_heartbeat_interval_ms",
            p.group_heartbeat_interval_ms,
            3_000.min(session_ms / 3),
            100,
            session_ms / 3,
            "3000",
        );
        ProducerSettings {
            poll_interval_secs: self.int(
                "producer.poll_interval_secs",
                p.poll_interval_secs,
                60,
                1,
                86_400,
                "60",
            ) as u64,
            settle_secs: self.int("producer.settle_secs", p.settle_secs, 300, 0, 86_400, "300")
                as u64,
            sweep_horizon_hours: self.int(
                "producer.sweep_horizon_hours",
                p.sweep_horizon_hours,
                24,
                1,
                MAX_SWEEP_HORIZON_HOURS,
                "24",
            ) as u64,
            sweep_interval_secs: self.int(
                "producer.sweep_interval_secs",
                p.sweep_interval_secs,
                3600,
                1,
                604_800,
                "3600",
            ) as u64,
            subscription_restart_cooldown_secs: self.int(
                "producer.subscription_restart_cooldown_secs",
                p.subscription_restart_cooldown_secs,
                900,
                0,
                86_400,
                "900",
            ) as u64,
            coordination: match p.coordination.as_deref() {
                None | Some("group") => ProducerCoordination::Group,
                Some("none") => ProducerCoordination::None,
                Some(_) => {
                    self.err(
                        "producer.coordination",
                        "unknown value",
                        "group or none",
                        "\"group\"",
                    );
                    ProducerCoordination::Group
                }
            },
            group_session_timeout_ms: session_ms as u64,
            group_heartbeat_interval_ms: heartbeat_ms as u64,
        }
    }

    fn consumer(&mut self, raw: Option<&RawConsumer>) -> ConsumerSettings {
        let empty = RawConsumer::default();
        let c = raw.unwrap_or(&empty);
        let max_blob_bytes = self.int(
            "consumer.max_blob_bytes",
            c.max_blob_bytes,
            512 << 20,
            1024,
            i64::MAX,
            "536870912",
        ) as u64;
        let max_record_bytes = self.int(
            "consumer.max_record_bytes",
            c.max_record_bytes,
            4 << 20,
            1024,
            i64::MAX,
            "4194304",
        ) as u64;
        if max_record_bytes > max_blob_bytes {
            self.err(
                "consumer.max_record_bytes",
                "larger than consumer.max_blob_bytes",
                "at most max_blob_bytes",
                "4194304",
            );
        }
        let fallback_tag = self
            .tag(
                "consumer.fallback_tag",
                Some(c.fallback_tag.as_deref().unwrap_or(DEFAULT_FALLBACK_TAG)),
            )
            .unwrap_or_else(|| DEFAULT_FALLBACK_TAG.to_string());
        let fp = c.bloom_false_positive_rate.unwrap_or(1e-9);
        let fp = if fp > 0.0 && fp <= 0.01 {
            fp
        } else {
            self.err(
                "consumer.bloom_false_positive_rate",
                "out of range",
                "a rate above 0 and at most 0.01 (a false positive drops a genuine record)",
                "1e-9",
            );
            1e-9
        };
        ConsumerSettings {
            max_record_bytes,
            max_blob_bytes,
            download_concurrency: self.int(
                "consumer.download_concurrency",
                c.download_concurrency,
                4,
                1,
                256,
                "4",
            ) as u32,
            fallback_tag,
            bloom_false_positive_rate: fp,
        }
    }

    fn uri_retry(&mut self, raw: Option<&RawUriRetry>) -> UriRetrySettings {
        let empty = RawUriRetry::default();
        let r = raw.unwrap_or(&empty);
        let max_attempts = r.max_attempts.map(|_| {
            self.int(
                "uri_retry.max_attempts",
                r.max_attempts,
                1,
                1,
                1_000_000,
                "20",
            ) as u32
        });
        let base = self.int(
            "uri_retry.backoff_base_secs",
            r.backoff_base_secs,
            30,
            1,
            86_400,
            "30",
        ) as u64;
        let max = self.int(
            "uri_retry.backoff_max_secs",
            r.backoff_max_secs,
            3600,
            1,
            604_800,
            "3600",
        ) as u64;
        if max < base {
            self.err(
                "uri_retry.backoff_max_secs",
                "smaller than uri_retry.backoff_base_secs",
                "at least backoff_base_secs",
                "3600",
            );
        }
        UriRetrySettings {
            max_attempts,
            backoff_base_secs: base,
            backoff_max_secs: max,
        }
    }

    fn metrics(&mut self, raw: Option<&RawMetrics>) -> MetricsSettings {
        let default: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 9464));
        let listen_address = match raw.and_then(|m| m.listen_address.as_deref()) {
            None => default,
            Some(s) => s.trim().parse().unwrap_or_else(|_| {
                self.err(
                    "metrics.listen_address",
                    "not an ip:port address",
                    "an IP address and port",
                    "\"0.0.0.0:9464\"",
                );
                default
            }),
        };
        MetricsSettings {
            enabled: raw.and_then(|m| m.enabled).unwrap_or(true),
            listen_address,
        }
    }

    fn health(&mut self, raw: Option<&RawHealth>) -> HealthSettings {
        let heartbeat_secs = self.int(
            "health.heartbeat_secs",
            raw.and_then(|h| h.heartbeat_secs),
            60,
            1,
            86_400,
            "60",
        ) as u64;
        let tag = self
            .tag(
                "health.tag",
                Some(
                    raw.and_then(|h| h.tag.as_deref())
                        .unwrap_or(DEFAULT_HEALTH_TAG),
                ),
            )
            .unwrap_or_else(|| DEFAULT_HEALTH_TAG.to_string());
        HealthSettings {
            heartbeat_secs,
            tag,
        }
    }

    fn logging(&mut self, raw: Option<&RawLogging>) -> LoggingSettings {
        let level = raw
            .and_then(|l| l.level.clone())
            .unwrap_or_else(|| String::from("info"));
        let plain = ["off", "error", "warn", "info", "debug", "trace"];
        let ok = plain.contains(&level.to_ascii_lowercase().as_str())
            || (!level.trim().is_empty()
                && level.contains('=')
                && level.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '=' | ',' | '_' | ':' | '-' | '.')
                }));
        if !ok {
            self.err(
                "logging.level",
                "unknown log level",
                "error, warn, info, debug, trace, or a filter like info,m365_common=debug",
                "\"info\"",
            );
        }
        LoggingSettings {
            level,
            json: raw.and_then(|l| l.json).unwrap_or(false),
        }
    }
}

/// Every content type plus `uri_retry`: what an absent services map means.
fn all_services<'a>(path: String) -> StreamsWanted<'a> {
    StreamsWanted {
        path,
        services: ContentType::ALL.into_iter().map(|c| (c, None)).collect(),
        uri_retry: true,
    }
}

/// Parses a start time already checked (and reported) elsewhere.
fn parse_quiet(s: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
        .filter(|t| *t <= now)
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hexadecimal.
pub(crate) fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // GUID shape check accepts the canonical form only.
    #[test]
    fn guid_shapes() {
        assert!(is_guid("0f3b8c2e-4d5a-4b6c-9e7f-1a2b3c4d5e6f"));
        assert!(is_guid("0F3B8C2E-4D5A-4B6C-9E7F-1A2B3C4D5E6F"));
        assert!(!is_guid("0f3b8c2e4d5a4b6c9e7f1a2b3c4d5e6f"));
        assert!(!is_guid("{0f3b8c2e-4d5a-4b6c-9e7f-1a2b3c4d5e6f}"));
        assert!(!is_guid("0f3b8c2e-4d5a-4b6c-9e7f-1a2b3c4d5e6g"));
    }

    // Plain http is accepted only for loopback hosts.
    #[test]
    fn loopback_detection() {
        assert!(is_loopback(&Url::parse("http://127.0.0.1:8080").unwrap()));
        assert!(is_loopback(&Url::parse("http://localhost/").unwrap()));
        assert!(!is_loopback(
            &Url::parse("http://manage.office.com").unwrap()
        ));
    }
}
