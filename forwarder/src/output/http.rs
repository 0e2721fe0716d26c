//! The `devo_http` output: Devo HTTP ingestion in stream mode (`shared/docs/devo.md` §2).
//!
//! One POST per tag group to `{endpoint}/stream/{domain}/token!{token}/{host}/{tag}`, body =
//! the group's records one per line (LF-terminated), gzip-compressed
//! (`Content-Encoding: gzip`). A group is split into several requests so that each body
//! stays below `max_request_bytes` uncompressed (Devo documents 32 MB per request; capping
//! the uncompressed size keeps us under it whichever size Devo counts). 2xx is success;
//! 5xx, 408, 429 and connection errors are retried with jittered backoff; any other 4xx is
//! a permanent error carrying the status and a short, token-free excerpt of the answer.
//!
//! The token is a secret: it is kept in a `SecretString`, and every URL that reaches a log
//! line or an error message has it replaced by `***`.
//!
//! Delivery note: when a batch spans several tags and a later group fails permanently, the
//! earlier groups were already accepted; a retry of the whole batch re-sends them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flate2::{Compress, Compression};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::OutputError;
use super::retry::{Backoff, RetryPolicy};
use super::stats::OutputStats;
use crate::framing::gzip_member_into;

/// Default cap on one request body (uncompressed): a safety margin below Devo's 32 MB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 31 * 1024 * 1024;

/// Settings of the HTTP ingestion output.
#[derive(Clone)]
pub struct HttpSettings {
    /// Base URL, e.g. `https://http-eu.devo.io` (a path prefix is kept).
    pub endpoint: Url,
    /// Devo domain name.
    pub domain: String,
    /// HTTP ELB token (secret).
    pub token: SecretString,
    /// Host name path segment (`-` when unknown).
    pub host: String,
    /// Cap on one request body, uncompressed.
    pub max_request_bytes: usize,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Retries for 5xx/408/429/connection errors.
    pub retry: RetryPolicy,
    /// gzip level (0–9).
    pub gzip_level: u32,
    /// Trust only this PEM CA file instead of the platform's roots (private endpoints, tests).
    pub ca_chain: Option<PathBuf>,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("endpoint", &self.endpoint.as_str())
            .field("domain", &self.domain)
            .field("token", &"***")
            .field("host", &self.host)
            .field("max_request_bytes", &self.max_request_bytes)
            .finish_non_exhaustive()
    }
}

impl HttpSettings {
    /// Settings with the defaults (31 MiB cap, 60 s timeout, retry until success).
    pub fn new(
        endpoint: Url,
        domain: impl Into<String>,
        token: SecretString,
        host: impl Into<String>,
    ) -> Self {
        HttpSettings {
            endpoint,
            domain: domain.into(),
            token,
            host: host.into(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            gzip_level: 6,
            ca_chain: None,
        }
    }
}

/// Devo HTTP ingestion, stream mode.
pub struct HttpOutput {
    settings: HttpSettings,
    client: reqwest::Client,
    compress: Compress,
    body: Vec<u8>,
    gz: Vec<u8>,
    backoff: Backoff,
    stats: Arc<OutputStats>,
}

impl std::fmt::Debug for HttpOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOutput")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Keeps at most `n` characters of `s`.
fn excerpt(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().nth(n).is_some() {
        out.push('…');
    }
    out
}

impl HttpOutput {
    /// Builds the HTTP client (reads the CA file now); sends nothing yet.
    pub fn new(settings: HttpSettings, stats: Arc<OutputStats>) -> Result<Self, OutputError> {
        if settings.domain.is_empty() || settings.token.expose_secret().is_empty() {
            return Err(OutputError::TlsConfig(
                "devo_http needs a domain and a token".to_owned(),
            ));
        }
        if settings.endpoint.cannot_be_a_base() {
            return Err(OutputError::TlsConfig(format!(
                "devo_http endpoint {} is not a base URL",
                settings.endpoint
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.connect_timeout);
        if let Some(ca) = &settings.ca_chain {
            let pem = std::fs::read(ca).map_err(|source| OutputError::ReadFile {
                what: "CA chain",
                path: ca.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                OutputError::BadCredentials {
                    what: "CA chain",
                    path: ca.clone(),
                    expected: "PEM certificate (-----BEGIN CERTIFICATE-----)",
                }
            })?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| OutputError::TlsConfig(format!("cannot build the HTTP client: {e}")))?;
        let level = settings.gzip_level.min(9);
        Ok(HttpOutput {
            compress: Compress::new(Compression::new(level), false),
            backoff: Backoff::new(settings.retry.clone()),
            settings,
            client,
            body: Vec::new(),
            gz: Vec::new(),
            stats,
        })
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<OutputStats> {
        &self.stats
    }

    /// The request URL for `tag`, token included (never log this).
    fn url_for(&self, tag: &str) -> Url {
        let mut url = self.settings.endpoint.clone();
        let token = format!("token!{}", self.settings.token.expose_secret());
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty()
                .push("stream")
                .push(&self.settings.domain)
                .push(&token)
                .push(&self.settings.host)
                .push(tag);
        }
        url
    }

    /// The request URL for `tag` with the token replaced by `***`, safe to print.
    pub fn redacted_url(&self, tag: &str) -> String {
        self.redact(self.url_for(tag).as_str())
    }

    fn redact(&self, text: &str) -> String {
        let token = self.settings.token.expose_secret();
        if token.is_empty() {
            text.to_owned()
        } else {
            text.replace(token, "***")
        }
    }

    /// Sends the records, grouped by tag (first-seen order), split under the size cap.
    /// Returns `Ok` once Devo answered 2xx to every request.
    pub async fn write_records(&mut self, records: &[(&str, &[u8])]) -> Result<(), OutputError> {
        let mut tags: Vec<&str> = Vec::new();
        for (tag, _) in records {
            if !tags.contains(tag) {
                tags.push(tag);
            }
        }
        let cap = self.settings.max_request_bytes.max(1);
        for tag in tags {
            let mut body = std::mem::take(&mut self.body);
            body.clear();
            let mut lines = 0u64;
            let mut result = Ok(());
            for (t, record) in records {
                if *t != tag {
                    continue;
                }
                let len = record.len() + usize::from(!record.ends_with(b"\n"));
                if len > cap {
                    result = Err(OutputError::RecordTooLarge {
                        tag: tag.to_owned(),
                        size: len,
                        cap,
                    });
                    break;
                }
                if body.len() + len > cap {
                    result = self.post(tag, &body, lines).await;
                    if result.is_err() {
                        break;
                    }
                    body.clear();
                    lines = 0;
                }
                body.extend_from_slice(record);
                if !record.ends_with(b"\n") {
                    body.push(b'\n');
                }
                lines += 1;
            }
            if result.is_ok() && !body.is_empty() {
                result = self.post(tag, &body, lines).await;
            }
            self.body = body;
            result?;
        }
        Ok(())
    }

    /// Pre-framed syslog bytes cannot be sent over HTTP (the tag is part of the URL).
    pub async fn write_batch(&mut self, _bytes: &[u8]) -> Result<(), OutputError> {
        Err(OutputError::NeedsRecords("devo_http"))
    }

    /// POSTs one gzip body for `tag`, retrying transient failures.
    async fn post(&mut self, tag: &str, body: &[u8], lines: u64) -> Result<(), OutputError> {
        let mut gz = std::mem::take(&mut self.gz);
        gz.clear();
        gzip_member_into(
            &mut self.compress,
            self.settings.gzip_level.min(9),
            body,
            &mut gz,
        );
        let payload = bytes::Bytes::copy_from_slice(&gz);
        self.gz = gz;
        let url = self.url_for(tag);
        loop {
            let result = self.post_once(&url, tag, payload.clone()).await;
            match result {
                Ok(()) => {
                    self.backoff.reset();
                    self.stats.record_batch(payload.len());
                    self.stats.record_tags([(
                        tag,
                        super::stats::TagCounts {
                            lines,
                            bytes: body.len() as u64,
                        },
                    )]);
                    return Ok(());
                }
                Err(e) => {
                    self.stats.record_write_error(&e);
                    if e.is_permanent() {
                        tracing::error!(error = %e, "Devo HTTP ingestion refused the request.");
                        return Err(e);
                    }
                    match self.backoff.next_delay() {
                        Some(delay) => {
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Devo HTTP request failed; retrying.");
                            tokio::time::sleep(delay).await;
                        }
                        None => {
                            return Err(OutputError::RetriesExhausted {
                                attempts: self.backoff.attempts(),
                                written: 0,
                                last: Box::new(e),
                            });
                        }
                    }
                }
            }
        }
    }

    async fn post_once(
        &self,
        url: &Url,
        tag: &str,
        payload: bytes::Bytes,
    ) -> Result<(), OutputError> {
        let response = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_ENCODING, "gzip")
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(payload)
            .send()
            .await
            .map_err(|e| OutputError::Http {
                url: self.redacted_url(tag),
                // without_url: reqwest's message would otherwise carry the token.
                detail: self.redact(&e.without_url().to_string()),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(OutputError::HttpStatus {
            status: status.as_u16(),
            url: self.redacted_url(tag),
            body: excerpt(&self.redact(&text), 300),
        })
    }
}
