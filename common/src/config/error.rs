//! Configuration errors and warnings.
//!
//! Every problem is reported with the key path it concerns (`tenants[1].auth.key_file`),
//! what is wrong, what was expected and an example, so an operator can fix the file without
//! reading code. [`ConfigErrors`] carries *all* problems found, not just the first.
//!
//! Messages name keys, files and environment variables, never the values found in the file:
//! a secret pasted into the wrong field must not end up in a log.

use std::fmt;

/// A position in the configuration file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line number, from 1.
    pub line: u64,
    /// Column number, from 1.
    pub column: u64,
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, e.g. `inputs.office365.credentials.client_id` or `tenants[1].auth.key_file`;
    /// empty for the document as a whole.
    pub path: String,
    /// What is wrong.
    pub problem: String,
    /// What was expected.
    pub expected: String,
    /// An example of a correct value (JSON syntax).
    pub example: String,
    /// Where in the file, when the parser knew.
    pub location: Option<Location>,
}

impl ConfigError {
    /// Builds an error without a file location.
    pub fn new(
        path: impl Into<String>,
        problem: impl Into<String>,
        expected: impl Into<String>,
        example: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            path: path.into(),
            problem: problem.into(),
            expected: expected.into(),
            example: example.into(),
            location: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str("(top level)")?;
        } else {
            f.write_str(&self.path)?;
        }
        write!(f, ": {}", self.problem)?;
        if let Some(loc) = self.location {
            write!(f, " (line {}, column {})", loc.line, loc.column)?;
        }
        if !self.expected.is_empty() {
            write!(f, "; expected {}", self.expected)?;
        }
        if !self.example.is_empty() {
            write!(f, ", e.g. {}", self.example)?;
        }
        Ok(())
    }
}

/// Every problem found while loading one configuration. Displays as a numbered list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file (or `<inline>`) the errors are about.
    pub source_name: String,
    /// The problems, in the order they were found (never empty when returned as an error).
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// The key paths of all errors, handy in tests and for machine-readable output.
    pub fn paths(&self) -> Vec<&str> {
        self.errors.iter().map(|e| e.path.as_str()).collect()
    }

    /// Whether some error concerns exactly `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }

    /// Number of errors.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// True when there is no error (never the case for a returned `Err`).
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {n} configuration error{}",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for (i, e) in self.errors.iter().enumerate() {
            write!(f, "\n  {}. {e}", i + 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Something accepted but worth telling the operator (ignored keys, certificates close to
/// expiry …). The binaries log these at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Key path the warning is about.
    pub path: String,
    /// What the operator should know.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Removes values that serde quotes in its messages (`invalid type: string "…"`,
/// `integer \`5\``, `unknown variant \`…\``) so that parse errors never echo what the file
/// contained. Key names in `unknown field` / `missing field` messages are kept.
pub(crate) fn redact_serde_message(msg: &str) -> String {
    let (head, tail) = match msg.find(", expected") {
        Some(i) => msg.split_at(i),
        None => (msg, ""),
    };
    let echoes_value = head.contains("invalid type")
        || head.contains("invalid value")
        || head.contains("invalid length")
        || head.contains("unknown variant");
    if !echoes_value {
        return msg.to_string();
    }
    let mut out = String::with_capacity(msg.len());
    let mut quote: Option<char> = None;
    for c in head.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '`' || c == '\'' {
                    quote = Some(c);
                }
            }
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    out.push_str(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values quoted by serde are removed while the expectation is kept.
    #[test]
    fn serde_values_are_redacted() {
        let m = redact_serde_message("invalid type: string \"hunter2\", expected u64");
        assert_eq!(m, "invalid type: string \"…\", expected u64");
        let m = redact_serde_message("invalid type: integer `1234`, expected a boolean");
        assert!(!m.contains("1234"), "{m}");
        let m = redact_serde_message("unknown field `kafak`, expected one of `kafka`");
        assert!(m.contains("kafak"), "{m}");
    }

    // The list display numbers every error and shows path, expectation and example.
    #[test]
    fn errors_display_as_numbered_list() {
        let errs = ConfigErrors {
            source_name: "c.json".into(),
            errors: vec![
                ConfigError::new("a.b", "missing", "a GUID", "\"x\""),
                ConfigError::new("", "empty", "", ""),
            ],
        };
        let s = errs.to_string();
        assert!(s.starts_with("c.json: 2 configuration errors"), "{s}");
        assert!(
            s.contains("1. a.b: missing; expected a GUID, e.g. \"x\""),
            "{s}"
        );
        assert!(s.contains("2. (top level): empty"), "{s}");
    }
}
