//! Reading the file: JSON or YAML into [`RawConfig`], with the key path and line/column of a
//! syntax or type error.
//!
//! The format comes from the extension (`.json`, `.yaml`, `.yml`); otherwise the content is
//! sniffed (a leading `{` means JSON). Parse errors are passed through
//! [`redact_serde_message`] so that no value from the file is echoed.

use std::path::Path;

use super::error::{ConfigError, Location, redact_serde_message};
use super::raw::RawConfig;

/// Syntax of a configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON (Devo's collector parameters are JSON).
    Json,
    /// YAML 1.2.
    Yaml,
}

impl Format {
    /// The format implied by a file extension, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }

    /// Guesses from content: JSON if the first non-blank character is `{`, else YAML.
    pub fn sniff(text: &str) -> Format {
        match text
            .trim_start_matches('\u{feff}')
            .trim_start()
            .chars()
            .next()
        {
            Some('{') => Format::Json,
            _ => Format::Yaml,
        }
    }
}

const DOC_EXPECTED: &str =
    "a JSON or YAML object with sections such as inputs, tenants, kafka, devo";
const DOC_EXAMPLE: &str = "{\"inputs\": {\"office365\": {\"credentials\": {…}}}}";

/// Parses `text` into the raw structs. On failure the one error carries the key path reached
/// (e.g. `tenants[0].requests_per_minute`) and the line/column.
pub fn parse_raw(text: &str, format: Format) -> Result<RawConfig, ConfigError> {
    if text.trim_start_matches('\u{feff}').trim().is_empty() {
        return Err(ConfigError::new(
            "",
            "the configuration is empty",
            DOC_EXPECTED,
            DOC_EXAMPLE,
        ));
    }
    match format {
        Format::Json => parse_json(text.trim_start_matches('\u{feff}')),
        Format::Yaml => parse_yaml(text),
    }
}

fn parse_json(text: &str) -> Result<RawConfig, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let (path, err) = match serde_path_to_error::deserialize::<_, RawConfig>(&mut de) {
        Ok(raw) => match de.end() {
            Ok(()) => return Ok(raw),
            Err(e) => (String::new(), e),
        },
        Err(e) => (path_text(e.path()), e.into_inner()),
    };
    let mut message = err.to_string();
    // serde_json appends " at line L column C"; we report the location separately.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    let problem = if err.is_syntax() || err.is_eof() {
        format!("JSON syntax error: {}", redact_serde_message(&message))
    } else {
        redact_serde_message(&message)
    };
    Err(ConfigError {
        path,
        expected: expected_for(&problem, "valid JSON matching the documented keys"),
        problem,
        example: String::new(),
        location: (err.line() > 0).then(|| Location {
            line: err.line() as u64,
            column: err.column() as u64,
        }),
    })
}

fn parse_yaml(text: &str) -> Result<RawConfig, ConfigError> {
    let mut path = String::new();
    // Snippets would quote the offending source line, which may hold a secret.
    let options = serde_saphyr::options! { with_snippet: false };
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
            path = path_text(e.path());
            e.into_inner()
        })
    });
    result.map_err(|err| {
        let location = err.location().and_then(|l| {
            (l.line() > 0).then(|| Location {
                line: l.line(),
                column: l.column(),
            })
        });
        let mut message = err.to_string();
        // The plain rendering ends with " at line L, column C"; keep only the message.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        let problem = plain_number_message(redact_serde_message(message.trim()));
        ConfigError {
            path,
            expected: expected_for(&problem, "valid YAML matching the documented keys"),
            problem,
            example: String::new(),
            location,
        }
    })
}

/// The parser's own "expected …" is kept; otherwise a generic expectation is added.
fn expected_for(problem: &str, generic: &str) -> String {
    if problem.contains("expected") {
        String::new()
    } else {
        generic.to_string()
    }
}

/// serde-saphyr says `invalid i64` for a scalar that is not a number; say it for operators.
fn plain_number_message(problem: String) -> String {
    let numeric = [
        "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "f32", "f64",
    ];
    match problem.strip_prefix("invalid ") {
        Some(t) if numeric.contains(&t.trim()) => {
            format!(
                "not a number (expected {})",
                if t.starts_with('f') {
                    "a number"
                } else {
                    "a whole number"
                }
            )
        }
        _ => problem,
    }
}

/// serde_path_to_error renders the root as `.`; we use the empty string.
fn path_text(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." { String::new() } else { s }
}
