//! Secret values in the configuration: inline, from an environment variable, or from a file.
//!
//! ```json
//! "client_secret": "inline value"
//! "client_secret": {"env": "M365_CLIENT_SECRET"}
//! "client_secret": {"file": "/run/secrets/m365_client_secret"}
//! ```
//!
//! Inline values are held in [`SecretString`] from the moment they are parsed, so neither the
//! raw nor the resolved configuration can print them through `Debug`. Error messages name the
//! key path and the variable or file, never the value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use super::error::ConfigError;

/// Where a secret comes from, as written in the file.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// The value itself (Devo's form: `"client_secret": "…"`).
    Inline(SecretString),
    /// `{"env": "VAR"}`: read the environment variable `VAR` at load time.
    Env(String),
    /// `{"file": "/path"}`: read the file at load time; one trailing newline is dropped.
    File(PathBuf),
}

const SECRET_EXPECTED: &str =
    "a string, {\"env\": \"VARIABLE\"} or {\"file\": \"/path/to/file\"} (quote the value in YAML)";

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SourceVisitor { scalars: false })
            .map(|v| match v {
                Sourced::Inline(s, _) => SecretSource::Inline(s),
                Sourced::Env(v) => SecretSource::Env(v),
                Sourced::File(p) => SecretSource::File(p),
            })
    }
}

/// A librdkafka property value: any scalar (numbers and booleans are turned into their
/// text form) or a secret reference. Held as a [`SecretString`] because SASL passwords and
/// key material travel the same way as harmless settings.
#[derive(Debug, Clone)]
pub struct PropertyValue {
    /// Where the value comes from.
    pub source: SecretSource,
    /// True when the file held a plain number or boolean (never secret).
    pub scalar: bool,
}

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SourceVisitor { scalars: true })
            .map(|v| match v {
                Sourced::Inline(s, scalar) => PropertyValue {
                    source: SecretSource::Inline(s),
                    scalar,
                },
                Sourced::Env(v) => PropertyValue {
                    source: SecretSource::Env(v),
                    scalar: false,
                },
                Sourced::File(p) => PropertyValue {
                    source: SecretSource::File(p),
                    scalar: false,
                },
            })
    }
}

enum Sourced {
    Inline(SecretString, bool),
    Env(String),
    File(PathBuf),
}

/// Accepts a string or a one-key map; with `scalars`, also numbers and booleans.
struct SourceVisitor {
    scalars: bool,
}

impl SourceVisitor {
    fn scalar<E: de::Error>(&self, text: String) -> Result<Sourced, E> {
        if self.scalars {
            Ok(Sourced::Inline(SecretString::from(text), true))
        } else {
            // No value in the message: it may be a secret written without quotes.
            Err(E::custom(format!(
                "a secret must be text, found a number or boolean; expected {SECRET_EXPECTED}"
            )))
        }
    }
}

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = Sourced;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SECRET_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Sourced, E> {
        Ok(Sourced::Inline(SecretString::from(v), false))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Sourced, E> {
        Ok(Sourced::Inline(SecretString::from(v), false))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Sourced, E> {
        self.scalar(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Sourced, E> {
        self.scalar(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Sourced, E> {
        self.scalar(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Sourced, E> {
        self.scalar(v.to_string())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Sourced, E> {
        Err(E::custom(format!(
            "empty value; expected {SECRET_EXPECTED}"
        )))
    }

    fn visit_none<E: de::Error>(self) -> Result<Sourced, E> {
        self.visit_unit()
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _seq: A) -> Result<Sourced, A::Error> {
        Err(de::Error::custom(format!(
            "found a list; expected {SECRET_EXPECTED}"
        )))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Sourced, A::Error> {
        let mut found: Option<Sourced> = None;
        while let Some(key) = map.next_key::<String>()? {
            if found.is_some() {
                return Err(de::Error::custom(
                    "a secret reference has exactly one key, `env` or `file`",
                ));
            }
            found = Some(match key.as_str() {
                "env" => Sourced::Env(map.next_value()?),
                "file" => Sourced::File(map.next_value()?),
                // The key is not echoed: a secret mistyped as a YAML flow map (`{s3cret}`)
                // arrives here as the key.
                _ => {
                    return Err(de::Error::custom(
                        "a secret reference takes the key `env` or `file` (the key given is not shown, as it may be the secret itself)",
                    ));
                }
            });
        }
        found.ok_or_else(|| {
            de::Error::custom("empty secret reference; expected {\"env\": …} or {\"file\": …}")
        })
    }
}

/// Where `{"env": …}` references are looked up. `Debug` shows variable names only.
#[derive(Clone, Default)]
pub enum EnvSource {
    /// The process environment (the normal case).
    #[default]
    Process,
    /// A fixed map, for tests and embedding; the process environment is not consulted.
    Map(BTreeMap<String, String>),
}

impl fmt::Debug for EnvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvSource::Process => f.write_str("Process"),
            EnvSource::Map(m) => f
                .debug_tuple("Map")
                .field(&m.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl EnvSource {
    /// The value of `name`, if set and valid Unicode.
    pub fn get(&self, name: &str) -> Option<String> {
        match self {
            EnvSource::Process => std::env::var(name).ok(),
            EnvSource::Map(m) => m.get(name).cloned(),
        }
    }
}

impl SecretSource {
    /// Resolves the secret. `path` is the key path used in errors; relative files are taken
    /// relative to `base_dir` (the configuration file's folder).
    pub fn resolve(
        &self,
        path: &str,
        base_dir: &Path,
        env: &EnvSource,
    ) -> Result<SecretString, ConfigError> {
        match self {
            SecretSource::Inline(s) => {
                if secrecy::ExposeSecret::expose_secret(s).is_empty() {
                    Err(ConfigError::new(
                        path,
                        "the secret is empty",
                        SECRET_EXPECTED,
                        "{\"env\": \"M365_CLIENT_SECRET\"}",
                    ))
                } else {
                    Ok(s.clone())
                }
            }
            SecretSource::Env(var) => match env.get(var) {
                Some(v) if !v.is_empty() => Ok(SecretString::from(v)),
                Some(_) => Err(ConfigError::new(
                    path,
                    format!("environment variable {var} is empty"),
                    "the variable to hold the secret",
                    format!("export {var}=…"),
                )),
                None => Err(ConfigError::new(
                    path,
                    format!("environment variable {var} is not set"),
                    "the variable to be set (and exported) before start",
                    format!("export {var}=…"),
                )),
            },
            SecretSource::File(p) => {
                let full = resolve_path(base_dir, p);
                match std::fs::read_to_string(&full) {
                    Ok(mut text) => {
                        if text.ends_with('\n') {
                            text.pop();
                            if text.ends_with('\r') {
                                text.pop();
                            }
                        }
                        if text.is_empty() {
                            Err(ConfigError::new(
                                path,
                                format!("secret file {} is empty", full.display()),
                                "a file holding the secret",
                                "{\"file\": \"/run/secrets/m365_client_secret\"}",
                            ))
                        } else {
                            Ok(SecretString::from(text))
                        }
                    }
                    Err(e) => Err(ConfigError::new(
                        path,
                        format!("cannot read secret file {}: {}", full.display(), e.kind()),
                        "a readable file holding the secret",
                        "{\"file\": \"/run/secrets/m365_client_secret\"}",
                    )),
                }
            }
        }
    }
}

/// `p` as is when absolute, else joined onto `base_dir`.
pub(crate) fn resolve_path(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}
