//! The configuration file: Devo's own Microsoft 365 collector parameters plus our sections,
//! JSON or YAML, checked as a whole before anything starts (design.md §7).
//!
//! # Layers
//! - [`raw`]: serde structs mirroring the file key for key. Devo's `inputs.office365` block
//!   loads unchanged (unknown Devo keys become warnings); our sections reject unknown keys.
//! - [`RawConfig::validate`]: collects *every* problem with its key path, expectation and
//!   example, applies defaults, resolves secrets (`{"env": …}`, `{"file": …}`) and loads PEM
//!   files. It reads local files and environment variables only, never the network.
//! - [`settings`]: the typed result the stages use ([`Config`], [`TenantSettings`],
//!   [`KafkaSettings`], [`DevoSettings`] …). Secrets are [`secrecy::SecretString`]s, so
//!   `Debug` output never contains them.
//!
//! # Use
//! ```no_run
//! let config = m365_common::config::load(std::path::Path::new("/etc/m365-devo/config.yaml"))
//!     .unwrap_or_else(|errors| { eprintln!("{errors}"); std::process::exit(2) });
//! for w in &config.warnings { eprintln!("warning: {w}"); }
//! for tenant in config.tenants() {
//!     for stream in &tenant.streams { println!("{} {}", tenant.tenant_id, stream.content_type); }
//! }
//! ```
//!
//! Relative paths in the file (certificates, keys, secret files) are taken relative to the
//! folder of the configuration file.

pub mod error;
pub mod parse;
pub mod raw;
pub mod secret;
pub mod settings;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};

pub use crate::cloud::{CloudEndpoints, CloudPreset, TokenEndpoint};
pub use error::{ConfigError, ConfigErrors, ConfigWarning, Location};
pub use parse::Format;
pub use raw::RawConfig;
pub use secret::{EnvSource, SecretSource};
pub use settings::*;
pub use validate::{
    DEFAULT_FALLBACK_TAG, DEFAULT_HEALTH_TAG, DEFAULT_REQUESTS_PER_MINUTE, MAX_SWEEP_HORIZON_HOURS,
};

/// Knobs of loading that are not in the file.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub(crate) env: EnvSource,
    pub(crate) now: Option<DateTime<Utc>>,
    pub(crate) require_tenants: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            env: EnvSource::Process,
            now: None,
            require_tenants: true,
        }
    }
}

impl LoadOptions {
    /// Process environment, current time, at least one tenant required.
    pub fn new() -> LoadOptions {
        LoadOptions::default()
    }

    /// Looks `{"env": …}` secrets up in `vars` instead of the process environment.
    pub fn with_env(mut self, vars: BTreeMap<String, String>) -> LoadOptions {
        self.env = EnvSource::Map(vars);
        self
    }

    /// Uses `now` as the current time (start times must not be after it).
    pub fn with_now(mut self, now: DateTime<Utc>) -> LoadOptions {
        self.now = Some(now);
        self
    }

    /// Accepts a file without tenants (e.g. a forwarder-only deployment).
    pub fn allow_no_tenants(mut self) -> LoadOptions {
        self.require_tenants = false;
        self
    }
}

/// Reads, parses and validates the configuration file at `path`. The format comes from the
/// extension (`.json`, `.yaml`, `.yml`) or, failing that, from the content.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, &LoadOptions::default())
}

/// [`load`] with explicit [`LoadOptions`].
pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Config, ConfigErrors> {
    let source_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        source_name: source_name.clone(),
        errors: vec![ConfigError::new(
            "",
            format!("cannot read the configuration file: {}", e.kind()),
            "a readable JSON or YAML file",
            "/etc/m365-devo/config.yaml",
        )],
    })?;
    let format = Format::from_path(path).unwrap_or_else(|| Format::sniff(&text));
    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    from_text(&text, format, base_dir, options).map_err(|mut e| {
        e.source_name = source_name;
        e
    })
}

/// Parses and validates configuration text. Relative paths are resolved against `base_dir`.
pub fn from_text(
    text: &str,
    format: Format,
    base_dir: &Path,
    options: &LoadOptions,
) -> Result<Config, ConfigErrors> {
    let raw = parse::parse_raw(text, format).map_err(|e| ConfigErrors {
        source_name: String::from("<inline>"),
        errors: vec![e],
    })?;
    raw.validate(base_dir, options)
}
