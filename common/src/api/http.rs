//! The shared HTTP client for Entra and the Management API: rustls (aws-lc-rs) with the
//! platform's roots plus an optional extra root (the local simulator's CA), connect timeout
//! 10 s, request timeout 120 s, gzip decoding, connection pooling.

use std::time::Duration;

/// Connect timeout (management-activity-api.md §14).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Overall request timeout; blob downloads override it per request (`ApiSettings::blob_timeout`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// The extra root certificate PEM holds no readable certificate.
    #[error("The extra root CA PEM could not be read: {0}.")]
    InvalidRootCa(String),
    /// reqwest refused the configuration (e.g. TLS set-up).
    #[error("The HTTP client could not be built: {0}.")]
    Build(#[source] reqwest::Error),
}

/// Builds the one HTTP client of a process. `extra_root_ca_pem` (one or more PEM
/// certificates) is trusted in addition to the platform roots.
pub fn http_client(extra_root_ca_pem: Option<&str>) -> Result<reqwest::Client, HttpClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .gzip(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("m365-devo/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = extra_root_ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| HttpClientError::InvalidRootCa(e.to_string()))?;
        if certs.is_empty() {
            return Err(HttpClientError::InvalidRootCa(
                "no CERTIFICATE block found".into(),
            ));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(HttpClientError::Build)
}
