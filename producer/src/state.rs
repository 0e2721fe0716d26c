//! The producer's durable state in the compacted `m365.state` topic: one cursor per stream and
//! one ledger entry per content id emitted (design.md §3–§4).
//!
//! Keys:
//! - `cursor/{tenant}/{content_type}` → [`CursorValue`]: everything before `listed_until` has
//!   been listed and its URIs acknowledged by Kafka.
//! - `ledger/{tenant}/{content_type}/{content_id}` → [`LedgerValue`]: this blob was emitted on
//!   `m365.uris`; a tombstone removes it once the blob has expired.
//!
//! One small record per blob (rather than one value per stream) keeps every value far below
//! Kafka's message size limit however busy the tenant is, and lets compaction drop expired ones.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use m365_common::envelope::{ENVELOPE_VERSION, UriMessage, rfc3339_z};
use serde::{Deserialize, Serialize};

/// Identifies a stream: (tenant, content type).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub tenant_id: String,
    pub content_type: String,
}

impl StreamId {
    pub fn new(tenant_id: &str, content_type: &str) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            content_type: content_type.into(),
        }
    }

    pub fn cursor_key(&self) -> String {
        format!("cursor/{}/{}", self.tenant_id, self.content_type)
    }

    pub fn ledger_key(&self, content_id: &str) -> String {
        format!(
            "ledger/{}/{}/{}",
            self.tenant_id, self.content_type, content_id
        )
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant_id, self.content_type)
    }
}

/// Value of a cursor key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorValue {
    pub version: u32,
    /// Everything with `contentCreated` before this has been listed and emitted.
    #[serde(with = "rfc3339_z")]
    pub listed_until: DateTime<Utc>,
    /// When this value was written: every URI of the stream produced before this time has
    /// its ledger entry durable too (used to bound the recovery scan without transactions).
    #[serde(with = "rfc3339_z")]
    pub updated_at: DateTime<Utc>,
}

/// Value of a ledger key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerValue {
    pub version: u32,
    #[serde(with = "rfc3339_z")]
    pub content_expiration: DateTime<Utc>,
}

/// Content ids already emitted for one stream, with their expiry.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    entries: HashMap<String, DateTime<Utc>>,
}

impl Ledger {
    pub fn contains(&self, content_id: &str) -> bool {
        self.entries.contains_key(content_id)
    }

    pub fn insert(&mut self, content_id: String, expiration: DateTime<Utc>) {
        self.entries.insert(content_id, expiration);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes and returns the ids whose blob expired before `now` (their keys get tombstones).
    pub fn take_expired(&mut self, now: DateTime<Utc>) -> Vec<String> {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, exp)| **exp < now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.entries.remove(id);
        }
        expired
    }
}

/// What the producer recovered for each stream at start.
#[derive(Debug, Default)]
pub struct Recovered {
    pub cursors: HashMap<StreamId, CursorValue>,
    pub ledgers: HashMap<StreamId, Ledger>,
    /// Values that could not be decoded, with their key (reported, then ignored).
    pub undecodable: Vec<String>,
}

impl Recovered {
    /// Builds the producer's view from the state table (other stages' keys are ignored).
    pub fn from_table(table: &BTreeMap<String, Vec<u8>>) -> Self {
        let mut out = Recovered::default();
        for (key, value) in table {
            if let Some(rest) = key.strip_prefix("cursor/") {
                let Some((tenant, ct)) = rest.split_once('/') else {
                    continue;
                };
                match serde_json::from_slice::<CursorValue>(value) {
                    Ok(v) if v.version == ENVELOPE_VERSION => {
                        out.cursors.insert(StreamId::new(tenant, ct), v);
                    }
                    _ => out.undecodable.push(key.clone()),
                }
            } else if let Some(rest) = key.strip_prefix("ledger/") {
                let mut parts = rest.splitn(3, '/');
                let (Some(tenant), Some(ct), Some(id)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                match serde_json::from_slice::<LedgerValue>(value) {
                    Ok(v) if v.version == ENVELOPE_VERSION => {
                        out.ledgers
                            .entry(StreamId::new(tenant, ct))
                            .or_default()
                            .insert(id.to_string(), v.content_expiration);
                    }
                    _ => out.undecodable.push(key.clone()),
                }
            }
        }
        out
    }

    /// Adds a URI found on `m365.uris` during the recovery scan to its stream's ledger.
    pub fn add_emitted(&mut self, uri: &UriMessage) {
        self.ledgers
            .entry(StreamId::new(&uri.tenant_id, &uri.content_type))
            .or_default()
            .insert(uri.content_id.clone(), uri.content_expiration);
    }
}

pub fn encode_cursor(listed_until: DateTime<Utc>, updated_at: DateTime<Utc>) -> Vec<u8> {
    let v = CursorValue {
        version: ENVELOPE_VERSION,
        listed_until,
        updated_at,
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

pub fn encode_ledger(content_expiration: DateTime<Utc>) -> Vec<u8> {
    let v = LedgerValue {
        version: ENVELOPE_VERSION,
        content_expiration,
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    // Cursor and ledger values written by the producer are read back from the state table,
    // and keys of other stages or of another version are not mistaken for ours.
    #[test]
    fn state_table_round_trip() {
        let t = Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap();
        let s = StreamId::new("t1", "Audit.Exchange");
        let mut table = BTreeMap::new();
        table.insert(s.cursor_key(), encode_cursor(t, t));
        table.insert(s.ledger_key("a$b$c"), encode_ledger(t));
        table.insert("dedup/t1/Audit.Exchange/0".into(), b"binary".to_vec());
        table.insert(
            "cursor/t2/Audit.General".into(),
            br#"{"version":99}"#.to_vec(),
        );
        let r = Recovered::from_table(&table);
        assert_eq!(r.cursors[&s].listed_until, t);
        assert!(r.ledgers[&s].contains("a$b$c"));
        assert_eq!(r.undecodable, vec!["cursor/t2/Audit.General".to_string()]);
    }

    // Expired ledger entries are removed and returned for tombstoning; live ones stay.
    #[test]
    fn ledger_expiry() {
        let t = Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap();
        let mut l = Ledger::default();
        l.insert("old".into(), t - chrono::Duration::hours(1));
        l.insert("new".into(), t + chrono::Duration::hours(1));
        assert_eq!(l.take_expired(t), vec!["old".to_string()]);
        assert!(l.contains("new") && !l.contains("old"));
    }
}
