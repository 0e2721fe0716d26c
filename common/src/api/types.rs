//! Wire types of the Management Activity API answers (management-activity-api.md §5):
//! subscriptions and content-blob descriptors, with lenient time parsing.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// One subscription, as listed or returned by `start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// Content type, e.g. `Audit.Exchange`.
    pub content_type: String,
    /// `enabled` or `disabled`.
    pub status: String,
    /// The webhook, or `None` when there is none.
    #[serde(default)]
    pub webhook: Option<Webhook>,
}

impl Subscription {
    /// True when the subscription is enabled (case-insensitive).
    pub fn is_enabled(&self) -> bool {
        self.status.eq_ignore_ascii_case("enabled")
    }
}

/// Webhook properties of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// `enabled`, `disabled` or `expired`.
    #[serde(default)]
    pub status: Option<String>,
    /// Notification URL.
    #[serde(default)]
    pub address: Option<String>,
    /// Opaque value echoed as `Webhook-AuthID`.
    #[serde(default)]
    pub auth_id: Option<String>,
    /// Expiration as sent (often null or empty).
    #[serde(default)]
    pub expiration: Option<String>,
}

/// One available content blob from `subscriptions/content`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentBlob {
    /// Content type echo.
    pub content_type: String,
    /// Opaque unique blob id (the blob dedupe key; never parse it).
    pub content_id: String,
    /// Absolute URL to GET the blob (use verbatim).
    pub content_uri: String,
    /// When the blob became available.
    #[serde(deserialize_with = "lenient_utc")]
    pub content_created: DateTime<Utc>,
    /// When it stops being retrievable (created + 7 days).
    #[serde(deserialize_with = "lenient_utc")]
    pub content_expiration: DateTime<Utc>,
}

/// Parses Microsoft timestamps: RFC 3339 with or without fraction, and the zone-less forms
/// `YYYY-MM-DDTHH:MM:SS[.fff]` (read as UTC).
pub fn parse_utc(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = s.trim_end_matches(['Z', 'z']);
    NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M"))
        .ok()
        .map(|n| n.and_utc())
}

fn lenient_utc<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    parse_utc(&s).ok_or_else(|| serde::de::Error::custom(format!("unreadable timestamp {s:?}")))
}

/// Formats a time parameter as the API documents it: `YYYY-MM-DDTHH:MM:SS`, UTC, no zone.
pub fn format_api_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the documented timestamp shapes all parse to the same instant.
    #[test]
    fn timestamps_parse_leniently() {
        let want = parse_utc("2015-05-23T17:35:00Z").unwrap();
        for s in [
            "2015-05-23T17:35:00.000Z",
            "2015-05-23T17:35:00",
            "2015-05-23T17:35:00.000",
            "2015-05-23T17:35",
        ] {
            assert_eq!(parse_utc(s), Some(want), "{s}");
        }
        assert_eq!(format_api_time(want), "2015-05-23T17:35:00");
    }
}
