//! TLS for the `devo_tls` output: builds the rustls client configuration from the three PEM
//! files Devo hands out per domain (client certificate, private key, CA chain), and turns
//! rustls failures into errors an operator can act on.
//!
//! As devo-sdk does when all three files are given (`shared/docs/devo.md` §1.2): the server
//! is verified against the chain file ONLY (no system or webpki roots), the host name is
//! checked, SNI is the configured server name, the client certificate is presented, and only
//! TLS 1.2 and 1.3 are offered. The crypto provider is aws-lc-rs, the one provider of the
//! dependency graph. PKCS#12 bundles are not supported yet and are refused with a clear error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

use super::OutputError;

/// Which TLS versions to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersions {
    /// TLS 1.2 and 1.3 (devo-sdk's range; the default).
    #[default]
    Tls12And13,
    /// TLS 1.3 only.
    Tls13Only,
    /// TLS 1.2 only (for old relays; also makes client-certificate rejections surface
    /// during the handshake).
    Tls12Only,
}

/// The TLS settings of a Devo domain, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Name sent as SNI and checked against the server certificate (DNS name or IP).
    pub server_name: String,
    /// PEM file with the CA chain the server certificate must chain to (Devo's `chain`).
    pub ca_chain: PathBuf,
    /// PEM file with our client certificate (Devo's `cert`); may hold intermediates after it.
    pub client_cert: Option<PathBuf>,
    /// PEM file with the client certificate's private key (Devo's `key`).
    pub client_key: Option<PathBuf>,
    /// PKCS#12 bundle instead of `client_cert`/`client_key` (not supported yet).
    pub pkcs12: Option<PathBuf>,
    /// Protocol versions to offer.
    pub versions: TlsVersions,
}

impl TlsSettings {
    /// Settings with certificate, key and chain files and the default TLS 1.2–1.3 range.
    pub fn new(
        server_name: impl Into<String>,
        ca_chain: impl Into<PathBuf>,
        client_cert: impl Into<PathBuf>,
        client_key: impl Into<PathBuf>,
    ) -> Self {
        TlsSettings {
            server_name: server_name.into(),
            ca_chain: ca_chain.into(),
            client_cert: Some(client_cert.into()),
            client_key: Some(client_key.into()),
            pkcs12: None,
            versions: TlsVersions::default(),
        }
    }

    /// The client certificate's file name, for error messages.
    pub fn client_cert_label(&self) -> String {
        match (&self.client_cert, &self.pkcs12) {
            (Some(p), _) | (None, Some(p)) => p.display().to_string(),
            (None, None) => "(none configured)".to_owned(),
        }
    }

    /// Parses the server name for SNI and certificate checks.
    pub fn server_name(&self) -> Result<ServerName<'static>, OutputError> {
        ServerName::try_from(self.server_name.clone()).map_err(|_| {
            OutputError::TlsConfig(format!(
                "server name {:?} is neither a DNS name nor an IP address",
                self.server_name
            ))
        })
    }

    /// Builds the rustls client configuration, reading and checking all files now.
    pub fn build(&self) -> Result<Arc<ClientConfig>, OutputError> {
        if let Some(p) = &self.pkcs12 {
            return Err(OutputError::Unsupported(format!(
                "PKCS#12 bundle {}: convert it to PEM files (openssl pkcs12 -in {0} -nokeys -out cert.pem; \
                 openssl pkcs12 -in {0} -nocerts -nodes -out key.pem) and set client_cert/client_key",
                p.display()
            )));
        }
        self.server_name()?;
        let roots = load_roots(&self.ca_chain)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.versions {
            TlsVersions::Tls12And13 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersions::Tls13Only => &[&rustls::version::TLS13],
            TlsVersions::Tls12Only => &[&rustls::version::TLS12],
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| OutputError::TlsConfig(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert_path), Some(key_path)) => {
                let certs = load_certs(cert_path, "client certificate")?;
                let key = load_key(key_path)?;
                builder.with_client_auth_cert(certs, key).map_err(|e| {
                    OutputError::TlsConfig(format!(
                        "client certificate {} and key {} cannot be used together: {e}",
                        cert_path.display(),
                        key_path.display()
                    ))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(OutputError::TlsConfig(
                    "client_cert and client_key must be given together".to_owned(),
                ));
            }
        };
        Ok(Arc::new(config))
    }

    /// Maps a handshake (or first-read) failure to an operator-facing error.
    pub fn classify(&self, err: &std::io::Error) -> OutputError {
        let server = self.server_name.clone();
        let Some(tls) = rustls_error(err) else {
            return OutputError::Handshake {
                server,
                detail: err.to_string(),
            };
        };
        match tls {
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
            | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            }) => OutputError::ServerNameMismatch {
                server,
                detail: tls.to_string(),
            },
            rustls::Error::InvalidCertificate(_) => OutputError::ServerNotTrusted {
                server,
                chain: self.ca_chain.clone(),
                detail: tls.to_string(),
            },
            rustls::Error::AlertReceived(alert) if is_client_cert_alert(*alert) => {
                OutputError::ClientCertRejected {
                    server,
                    cert: self.client_cert_label(),
                    detail: format!("server sent TLS alert {alert:?}"),
                }
            }
            other => OutputError::Handshake {
                server,
                detail: other.to_string(),
            },
        }
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if any.
pub fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Alerts a server sends when it does not accept the client certificate.
fn is_client_cert_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
    )
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, OutputError> {
    std::fs::read(path).map_err(|source| OutputError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, OutputError> {
    let pem = read(path, what)?;
    let bad = || OutputError::BadCredentials {
        what,
        path: path.to_owned(),
        expected: "PEM certificate (-----BEGIN CERTIFICATE-----)",
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad())?;
    if certs.is_empty() {
        return Err(bad());
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, OutputError> {
    let pem = read(path, "client key")?;
    // The PEM error is not shown: it could quote part of the key.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| OutputError::BadCredentials {
        what: "client key",
        path: path.to_owned(),
        expected: "unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, OutputError> {
    let certs = load_certs(path, "CA chain")?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(OutputError::BadCredentials {
            what: "CA chain",
            path: path.to_owned(),
            expected: "CA certificate usable as a trust anchor",
        });
    }
    Ok(roots)
}
