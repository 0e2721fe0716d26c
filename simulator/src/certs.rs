//! Per-run TLS test PKI: a throw-away CA, a server certificate for `127.0.0.1`/`localhost`
//! and client certificates, generated with rcgen at run time (never checked in).
//!
//! The fake Devo uses it for its mutual-TLS syslog listener; tests and the demo use it to
//! build matching rustls client configurations, to present a *wrong* client certificate
//! (signed by an unrelated CA), or to trust a wrong CA. [`rsa_self_signed`] makes the RSA
//! key + self-signed certificate pair used for Microsoft certificate-credential tests.
//!
//! All rustls objects are built with the aws-lc-rs provider explicitly, so nothing depends
//! on a process-wide default provider having been installed.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Errors while generating or loading test TLS material.
///
/// Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused to generate a key or certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM document could not be parsed (which document is named, never its content).
    #[error("could not parse PEM {what}: {reason}")]
    Pem {
        /// Which document (e.g. "CA certificate", "server key").
        what: &'static str,
        /// Parser error text.
        reason: String,
    },
    /// rustls rejected the configuration (bad key, unsupported versions, ...).
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client certificate verifier error: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A client identity (certificate + private key PEM) that can be presented to a TLS server.
#[derive(Clone)]
pub struct ClientIdentity {
    /// Leaf certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM. Secret: not shown by `Debug`.
    pub key_pem: String,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The PEM material of one test PKI: a CA, a server certificate (SANs `127.0.0.1`,
/// `localhost`) and a client certificate, both signed by the CA.
#[derive(Clone)]
pub struct TestPki {
    /// CA certificate, PEM (the "chain" file a Devo sender trusts).
    pub ca_cert_pem: String,
    /// Server leaf certificate, PEM.
    pub server_cert_pem: String,
    /// Server private key, PEM (PKCS#8).
    pub server_key_pem: String,
    /// Client leaf certificate, PEM.
    pub client_cert_pem: String,
    /// Client private key, PEM (PKCS#8).
    pub client_key_pem: String,
    /// Name the PKI was generated with (used in subject names).
    name: String,
    /// CA private key, kept so further client certificates can be issued.
    ca_key_pem: String,
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki")
            .field("name", &self.name)
            .field("keys", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Where [`TestPki::write_to`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    /// The directory holding all files.
    pub dir: PathBuf,
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `server.pem`.
    pub server_cert: PathBuf,
    /// `server.key` (mode 0600).
    pub server_key: PathBuf,
    /// `client.pem`.
    pub client_cert: PathBuf,
    /// `client.key` (mode 0600).
    pub client_key: PathBuf,
}

/// The aws-lc-rs crypto provider, used for every rustls config built here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "m365-sim test PKI");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(
    common_name: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params
}

fn issue_client_with(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
) -> Result<ClientIdentity, CertError> {
    let key = KeyPair::generate()?;
    let cert = leaf_params(common_name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
        .signed_by(&key, issuer)?;
    Ok(ClientIdentity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl TestPki {
    /// Generate a fresh CA, a server certificate (SANs `127.0.0.1`, `localhost`) and a
    /// client certificate, all ECDSA P-256, both leaves signed by the CA.
    pub fn generate(name: &str) -> Result<TestPki, CertError> {
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let params = ca_params(name);
        let ca_cert = params.self_signed(&ca_key)?;
        let issuer = Issuer::new(params, ca_key);

        let server_key = KeyPair::generate()?;
        let sans = vec![
            SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            SanType::DnsName(
                "localhost"
                    .try_into()
                    .map_err(|e: rcgen::Error| CertError::Generate(e))?,
            ),
        ];
        let server_cert = leaf_params(
            &format!("{name} server"),
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
        .signed_by(&server_key, &issuer)?;

        let client = issue_client_with(&issuer, &format!("{name} client"))?;

        Ok(TestPki {
            ca_cert_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client.cert_pem,
            client_key_pem: client.key_pem,
            name: name.to_owned(),
            ca_key_pem,
        })
    }

    /// The name this PKI was generated with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The default client identity (the one in `client_cert_pem` / `client_key_pem`).
    pub fn client_identity(&self) -> ClientIdentity {
        ClientIdentity {
            cert_pem: self.client_cert_pem.clone(),
            key_pem: self.client_key_pem.clone(),
        }
    }

    /// Issue another client certificate signed by THIS PKI's CA (accepted by its servers).
    pub fn issue_client(&self, common_name: &str) -> Result<ClientIdentity, CertError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::new(ca_params(&self.name), ca_key);
        issue_client_with(&issuer, common_name)
    }

    /// A client identity signed by a freshly generated, UNRELATED CA: a server built from
    /// this PKI with `require_client_cert = true` must refuse it.
    pub fn other_client(&self) -> Result<ClientIdentity, CertError> {
        let ca_key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params(&format!("{} unrelated", self.name)), ca_key);
        issue_client_with(&issuer, &format!("{} intruder client", self.name))
    }

    /// A whole unrelated PKI (different CA): trust its CA in a client to simulate a client
    /// that does not trust our server, or present its client certificate to be refused.
    pub fn unrelated(&self) -> Result<TestPki, CertError> {
        TestPki::generate(&format!("{} unrelated", self.name))
    }

    /// The CA certificate, DER.
    pub fn ca_cert_der(&self) -> Result<CertificateDer<'static>, CertError> {
        parse_cert(&self.ca_cert_pem, "CA certificate")
    }

    /// A root store holding only this PKI's CA.
    pub fn root_store(&self) -> Result<RootCertStore, CertError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert_der()?)?;
        Ok(roots)
    }

    /// Write `ca.pem server.pem server.key client.pem client.key` into `dir` (created if
    /// missing). Key files are created with mode 0600 on Unix.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<PkiPaths> {
        fs::create_dir_all(dir)?;
        let paths = PkiPaths {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        write_file(&paths.ca, &self.ca_cert_pem, false)?;
        write_file(&paths.server_cert, &self.server_cert_pem, false)?;
        write_file(&paths.server_key, &self.server_key_pem, true)?;
        write_file(&paths.client_cert, &self.client_cert_pem, false)?;
        write_file(&paths.client_key, &self.client_key_pem, true)?;
        Ok(paths)
    }

    /// A rustls server config presenting the server certificate. With
    /// `require_client_cert`, clients must present a certificate chaining to this CA
    /// (mutual TLS, as Devo's ingestion requires); otherwise no client auth is asked for.
    pub fn server_config(
        &self,
        require_client_cert: bool,
    ) -> Result<rustls::ServerConfig, CertError> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(rustls::ALL_VERSIONS)?;
        let builder = if require_client_cert {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(self.root_store()?), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let chain = vec![parse_cert(&self.server_cert_pem, "server certificate")?];
        let key = parse_key(&self.server_key_pem, "server key")?;
        Ok(builder.with_single_cert(chain, key)?)
    }

    /// A rustls client config that trusts this CA and presents `identity` (or no client
    /// certificate with `None`).
    pub fn client_config_with(
        &self,
        identity: Option<&ClientIdentity>,
    ) -> Result<rustls::ClientConfig, CertError> {
        client_config(self.root_store()?, identity)
    }

    /// A rustls client config that trusts this CA and presents the default client cert.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, CertError> {
        self.client_config_with(Some(&self.client_identity()))
    }
}

/// A rustls client config trusting exactly `roots`, presenting `identity` if given.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, CertError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .with_root_certificates(roots);
    Ok(match identity {
        Some(id) => builder.with_client_auth_cert(
            vec![parse_cert(&id.cert_pem, "client certificate")?],
            parse_key(&id.key_pem, "client key")?,
        )?,
        None => builder.with_no_client_auth(),
    })
}

/// The server name clients should use for the test server certificate (`127.0.0.1`).
pub fn localhost_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

/// Generate an RSA-2048 key and a self-signed certificate (CN = `cn`, SHA-256 signature),
/// as `(cert_pem, key_pem)`; the key is PKCS#8 PEM. Used for Microsoft Entra ID
/// certificate-credential (client assertion) tests.
pub fn rsa_self_signed(cn: &str) -> Result<(String, String), CertError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Parse the first certificate of a PEM document.
pub fn parse_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, CertError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::Pem {
        what,
        reason: e.to_string(),
    })
}

/// Parse the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM document.
pub fn parse_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, CertError> {
    // The pki-types error text describes the PEM structure, never the key bytes.
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::Pem {
        what,
        reason: e.to_string(),
    })
}

fn write_file(path: &Path, contents: &str, secret: bool) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    #[cfg(unix)]
    if secret {
        // `mode` only applies on creation; tighten an already existing file too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the generated PEMs parse and both server config variants build.
    #[test]
    fn generated_pki_parses_and_builds_server_configs() {
        let pki = TestPki::generate("unit").unwrap();
        parse_cert(&pki.ca_cert_pem, "ca").unwrap();
        parse_cert(&pki.server_cert_pem, "server").unwrap();
        parse_cert(&pki.client_cert_pem, "client").unwrap();
        parse_key(&pki.server_key_pem, "server key").unwrap();
        parse_key(&pki.client_key_pem, "client key").unwrap();
        pki.server_config(true).unwrap();
        pki.server_config(false).unwrap();
        pki.client_config().unwrap();
        let other = pki.other_client().unwrap();
        assert_ne!(other.cert_pem, pki.client_cert_pem);
        pki.issue_client("second").unwrap();
    }

    // Proves the server certificate carries the 127.0.0.1 and localhost SANs and is issued by the CA.
    #[test]
    fn server_cert_has_sans_and_ca_issuer() {
        let pki = TestPki::generate("sans").unwrap();
        let der = parse_cert(&pki.server_cert_pem, "server").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        assert!(names.iter().any(|n| n.contains("localhost")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("127")), "{names:?}");
        let ca_der = pki.ca_cert_der().unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca.subject());
    }

    // Proves key files are written with mode 0600 and Debug never shows key material.
    #[test]
    fn write_to_protects_keys_and_debug_redacts() {
        let pki = TestPki::generate("files").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let paths = pki.write_to(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&paths.ca).unwrap(), pki.ca_cert_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&paths.client_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let debug = format!("{pki:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }

    // Proves the RSA helper makes a 2048-bit RSA key and a matching self-signed certificate.
    #[test]
    fn rsa_self_signed_is_rsa_2048() {
        let (cert_pem, key_pem) = rsa_self_signed("graph-app").unwrap();
        assert!(key_pem.contains("PRIVATE KEY"));
        let der = parse_cert(&cert_pem, "rsa cert").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let pk = cert.public_key().parsed().unwrap();
        assert_eq!(pk.key_size(), 2048);
        assert_eq!(cert.issuer(), cert.subject());
    }
}
