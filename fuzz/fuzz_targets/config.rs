//! Fuzz target `config`: the configuration loader (`m365_common::config::from_text`) on
//! arbitrary text, as JSON and as YAML.
//!
//! Input: byte 0 picks the format (even = JSON, odd = YAML), the rest is the file text (inputs
//! that are not UTF-8 are skipped: the loader reads files with `read_to_string`). Secrets
//! given as `{"env": …}` are looked up in an empty map and relative paths in an empty folder,
//! so runs are deterministic. Invariants: no panic; an error list is never empty and every
//! error renders (`Display` and `Debug`); a loaded config renders with `Debug`.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use m365_common::config::{Format, LoadOptions, from_text};

/// A fixed "now" for start-time checks, so a run does not depend on the clock.
fn fixed_now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("valid timestamp")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if mode % 2 == 0 {
        Format::Json
    } else {
        Format::Yaml
    };
    let options = LoadOptions::new()
        .with_env(BTreeMap::new())
        .with_now(fixed_now());
    let options = if mode & 2 == 0 {
        options
    } else {
        options.allow_no_tenants()
    };
    match from_text(
        text,
        format,
        Path::new("/nonexistent/m365-devo-fuzz"),
        &options,
    ) {
        Ok(config) => {
            let _ = format!("{config:?}");
            for w in &config.warnings {
                let _ = w.to_string();
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "an error list with no errors");
            let rendered = errors.to_string();
            assert!(!rendered.is_empty());
            for e in &errors.errors {
                let _ = format!("{e} {e:?}");
            }
        }
    }
});
