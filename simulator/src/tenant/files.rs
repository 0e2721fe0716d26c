//! Real audit records read from files (JSON lines, one JSON array, or one array per line),
//! kept byte for byte and routed to the content type their `RecordType`/`Workload` implies.

use std::collections::HashMap;
use std::path::Path;

use serde_json::value::RawValue;

use super::config::ContentType;

/// One record taken from a file, exactly as written there.
#[derive(Clone, Debug)]
pub(crate) struct FileRecord {
    pub(crate) id: String,
    pub(crate) bytes: String,
    pub(crate) content_type: ContentType,
}

/// Why a record file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read record file {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is not JSON, or not an object/array.
    #[error("record file {path}, line {line}: {reason}")]
    Parse {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
        /// What was wrong.
        reason: String,
    },
}

/// Content type a record belongs to, from its `RecordType` (number or string) and
/// `Workload`/`Operation` (Microsoft's routing follows the source workload).
pub(crate) fn route(record: &str) -> ContentType {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "RecordType", default)]
        record_type: Option<serde_json::Value>,
        #[serde(rename = "Workload", default, borrow)]
        workload: Option<std::borrow::Cow<'a, str>>,
        #[serde(rename = "Operation", default, borrow)]
        operation: Option<std::borrow::Cow<'a, str>>,
    }
    let Ok(p) = serde_json::from_str::<Probe<'_>>(record) else {
        return ContentType::General;
    };
    let rt = match &p.record_type {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    if let Some(rt) = rt {
        match rt {
            8 | 9 | 15 | 294 => return ContentType::AzureActiveDirectory,
            1 | 2 | 3 | 19 | 50 | 101 => return ContentType::Exchange,
            4 | 6 | 7 | 14 | 36 | 37 | 54..=56 | 102 => return ContentType::SharePoint,
            11 | 13 | 33 | 63 | 107 => return ContentType::Dlp,
            _ => {}
        }
    }
    if p.operation.as_deref().is_some_and(|o| o.starts_with("Dlp")) {
        return ContentType::Dlp;
    }
    match p
        .workload
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("azureactivedirectory") => ContentType::AzureActiveDirectory,
        Some("exchange") | Some("exchange online") => ContentType::Exchange,
        Some("sharepoint") | Some("onedrive") => ContentType::SharePoint,
        _ => ContentType::General,
    }
}

fn record_of(raw: &RawValue) -> FileRecord {
    #[derive(serde::Deserialize)]
    struct IdProbe {
        #[serde(rename = "Id", default)]
        id: Option<serde_json::Value>,
    }
    let bytes = raw.get().to_owned();
    let id = serde_json::from_str::<IdProbe>(&bytes)
        .ok()
        .and_then(|p| p.id)
        .map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_default();
    let content_type = route(&bytes);
    FileRecord {
        id,
        bytes,
        content_type,
    }
}

/// Pick the record out of one JSON object: the named field, an `event` wrapper (Panther's
/// test files), or the object itself.
fn unwrap_object<'a>(raw: &'a RawValue, field: Option<&str>) -> Result<&'a RawValue, String> {
    let map: HashMap<&str, &RawValue> =
        serde_json::from_str(raw.get()).map_err(|e| format!("not a JSON object: {e}"))?;
    if let Some(f) = field {
        return map
            .get(f)
            .copied()
            .ok_or_else(|| format!("field {f:?} missing"));
    }
    let looks_like_record = map.contains_key("Id") || map.contains_key("RecordType");
    match map.get("event") {
        Some(inner) if !looks_like_record => Ok(inner),
        _ => Ok(raw),
    }
}

/// Parse file contents into records.
pub(crate) fn parse(
    text: &str,
    field: Option<&str>,
    path: &str,
) -> Result<Vec<FileRecord>, FileError> {
    let trimmed = text.trim_start();
    // One JSON array spanning the whole file.
    if trimmed.starts_with('[')
        && let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(text)
    {
        return items
            .into_iter()
            .map(|raw| {
                unwrap_object(raw, field)
                    .map(record_of)
                    .map_err(|reason| FileError::Parse {
                        path: path.to_owned(),
                        line: 1,
                        reason,
                    })
            })
            .collect();
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let err = |reason: String| FileError::Parse {
            path: path.to_owned(),
            line: n + 1,
            reason,
        };
        if line.trim_start().starts_with('[') {
            let items: Vec<&RawValue> =
                serde_json::from_str(line).map_err(|e| err(format!("bad JSON array: {e}")))?;
            for raw in items {
                out.push(record_of(unwrap_object(raw, field).map_err(err)?));
            }
        } else {
            let raw: &RawValue =
                serde_json::from_str(line).map_err(|e| err(format!("bad JSON: {e}")))?;
            out.push(record_of(unwrap_object(raw, field).map_err(err)?));
        }
    }
    Ok(out)
}

/// Read and parse a record file.
pub(crate) fn load(path: &Path, field: Option<&str>) -> Result<Vec<FileRecord>, FileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, field, &shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves wrapper detection picks `event`, bytes are kept exactly and routing works.
    #[test]
    fn panther_wrapper_and_exact_bytes() {
        let line = r#"{"panther_rule":"x","event":{"Id":"abc", "RecordType":15,"Workload":"AzureActiveDirectory"}}"#;
        let recs = parse(line, None, "t").expect("parse");
        assert_eq!(recs.len(), 1);
        assert_eq!(
            recs[0].bytes,
            r#"{"Id":"abc", "RecordType":15,"Workload":"AzureActiveDirectory"}"#
        );
        assert_eq!(recs[0].id, "abc");
        assert_eq!(recs[0].content_type, ContentType::AzureActiveDirectory);
    }

    // Proves array files and string RecordTypes are understood.
    #[test]
    fn arrays_and_string_record_types() {
        let text = "[{\"Id\":\"a\",\"RecordType\":\"1\"},\n {\"Id\":\"b\",\"Operation\":\"DlpRuleMatch\"}]";
        let recs = parse(text, None, "t").expect("parse");
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].content_type, ContentType::Exchange);
        assert_eq!(recs[1].content_type, ContentType::Dlp);
        assert_eq!(
            recs[1].bytes,
            "{\"Id\":\"b\",\"Operation\":\"DlpRuleMatch\"}"
        );
    }
}
