//! The certificate credential: a JWT client assertion signed with the app's private key
//! (management-activity-api.md §3.3), and the certificate thumbprints Entra uses to find
//! the registered certificate (`x5t` = SHA-1, `x5t#S256` = SHA-256 of the DER certificate,
//! both base64url without padding).
//!
//! Signing goes through jsonwebtoken on aws-lc-rs (the one crypto provider of the graph).
//! The key lives only inside the [`EncodingKey`]; nothing here prints it.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use sha1::Digest as _;

use super::SigningAlg;

/// Lifetime of one client assertion (Entra asks for 5–10 minutes).
const ASSERTION_LIFETIME_SECS: i64 = 600;

/// Certificate thumbprints as sent in the assertion header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbprints {
    /// `x5t`: base64url-no-pad(SHA-1(DER)).
    pub x5t: String,
    /// `x5t#S256`: base64url-no-pad(SHA-256(DER)).
    pub x5t_s256: String,
}

/// Error reading a certificate PEM.
#[derive(Debug, Clone, thiserror::Error)]
#[error("No readable X.509 certificate in the PEM text: {0}.")]
pub struct CertificateError(String);

/// Computes `(x5t, x5t#S256)` for the first certificate in `cert_pem`.
pub fn thumbprints(cert_pem: &str) -> Result<(String, String), CertificateError> {
    let der = first_certificate(cert_pem)?;
    let t = thumbprints_of_der(&der);
    Ok((t.x5t, t.x5t_s256))
}

/// Thumbprints of a DER certificate.
pub fn thumbprints_of_der(der: &[u8]) -> Thumbprints {
    Thumbprints {
        x5t: URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(der)),
        x5t_s256: URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der)),
    }
}

fn first_certificate(cert_pem: &str) -> Result<Vec<u8>, CertificateError> {
    let cert = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or_else(|| CertificateError("no CERTIFICATE block found".into()))?
        .map_err(|e| CertificateError(e.to_string()))?;
    Ok(cert.as_ref().to_vec())
}

/// Builds and signs client assertions for one app and one token endpoint.
pub(crate) struct AssertionSigner {
    key: EncodingKey,
    header: Header,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("alg", &self.header.alg)
            .field("x5t", &self.header.x5t)
            .field("x5t_s256", &self.header.x5t_s256)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: i64,
    iat: i64,
    exp: i64,
}

impl AssertionSigner {
    /// Reads the certificate and the RSA private key (PKCS#8 or PKCS#1 PEM; the key may share
    /// a file with certificates). At least one thumbprint header must be requested.
    pub(crate) fn new(
        cert_pem: &str,
        key_pem: &str,
        alg: SigningAlg,
        x5t: bool,
        x5t_s256: bool,
    ) -> Result<Self, String> {
        if !x5t && !x5t_s256 {
            return Err("at least one of x5t and x5t#S256 must be sent".into());
        }
        let der = first_certificate(cert_pem).map_err(|e| e.to_string())?;
        let prints = thumbprints_of_der(&der);
        let key = rsa_encoding_key(key_pem)?;
        let mut header = Header::new(match alg {
            SigningAlg::Rs256 => Algorithm::RS256,
            SigningAlg::Ps256 => Algorithm::PS256,
        });
        header.typ = Some("JWT".into());
        header.x5t = x5t.then_some(prints.x5t);
        header.x5t_s256 = x5t_s256.then_some(prints.x5t_s256);
        let signer = AssertionSigner { key, header };
        // Sign once now so a key that does not match the algorithm fails at start-up.
        signer.sign("https://invalid.example/check", "check")?;
        Ok(signer)
    }

    /// A fresh assertion for `client_id` addressed to `audience` (the token endpoint URL).
    pub(crate) fn sign(&self, audience: &str, client_id: &str) -> Result<String, String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(|e| e.to_string())
    }
}

/// Extracts the private key block from `key_pem` and hands it to jsonwebtoken.
fn rsa_encoding_key(key_pem: &str) -> Result<EncodingKey, String> {
    if key_pem.contains("ENCRYPTED PRIVATE KEY") {
        return Err("encrypted private keys are not supported; decrypt the key first".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| "no readable private key block found in the key PEM".to_string())?;
    let (label, der) = match &key {
        PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
        _ => return Err("the private key must be an RSA key (PKCS#8 or PKCS#1)".into()),
    };
    // Re-wrap just the key block so certificates in the same file do not confuse the parser.
    // The copies are held in SecretStrings so they are wiped when dropped.
    let body = SecretString::from(STANDARD.encode(der));
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.expose_secret().as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    let pem = SecretString::from(pem);
    EncodingKey::from_rsa_pem(pem.expose_secret().as_bytes())
        .map_err(|e| format!("the private key is not a usable RSA key ({e})"))
}
