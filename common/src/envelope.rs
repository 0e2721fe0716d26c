//! The JSON messages on the Kafka topics (design.md §3).
//!
//! Every value is UTF-8 JSON with snake_case fields and RFC 3339 UTC times ending in `Z`.
//! `m365.events` is the exception: its value is the audit record's bytes exactly as Microsoft
//! sent them, and its metadata travels in headers (see [`EventHeaders`]).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Version tag carried by every persisted or published envelope (style.md §7).
pub const ENVELOPE_VERSION: u32 = 1;

/// One content blob to download: a message on `m365.uris`, `m365.uris.retry` or
/// `m365.uris.dead`. Keyed `"{tenant_id}/{content_type}"` (see [`stream_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UriMessage {
    pub tenant_id: String,
    pub content_type: String,
    pub content_id: String,
    pub content_uri: String,
    #[serde(with = "rfc3339_z")]
    pub content_created: DateTime<Utc>,
    #[serde(with = "rfc3339_z")]
    pub content_expiration: DateTime<Utc>,
    #[serde(with = "rfc3339_z")]
    pub listed_at: DateTime<Utc>,
    /// 0 on `m365.uris`; 1 and up on the retry topic.
    pub attempt: u32,
    /// Retry topic only: do not try again before this time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_z_opt"
    )]
    pub not_before: Option<DateTime<Utc>>,
    /// Retry topic only: what went wrong last time (never contains secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Dead topic only: why the blob can no longer be had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl UriMessage {
    /// The Kafka key: all blobs of one stream land on one partition, in listing order.
    pub fn key(&self) -> String {
        stream_key(&self.tenant_id, &self.content_type)
    }
}

/// `"{tenant_id}/{content_type}"`: the key of a stream on `m365.uris` and in `m365.state`.
pub fn stream_key(tenant_id: &str, content_type: &str) -> String {
    format!("{tenant_id}/{content_type}")
}

/// Header names on `m365.events` records.
pub struct EventHeaders;

impl EventHeaders {
    pub const TAG: &'static str = "tag";
    pub const TENANT_ID: &'static str = "tenant_id";
    pub const CONTENT_TYPE: &'static str = "content_type";
    pub const CONTENT_ID: &'static str = "content_id";
    pub const WORKLOAD: &'static str = "workload";
}

/// Formats a time as RFC 3339 UTC with `Z` and milliseconds, the form of every time on our topics.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde adapter: RFC 3339 with `Z`.
pub mod rfc3339_z {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Serde adapter: optional RFC 3339 with `Z`.
pub mod rfc3339_z_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_time(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    // A URI message round-trips and its times carry `Z`, as the topic contract says.
    #[test]
    fn uri_message_round_trip_uses_z_times() {
        let t = Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap();
        let m = UriMessage {
            tenant_id: "t1".into(),
            content_type: "Audit.Exchange".into(),
            content_id: "a$b".into(),
            content_uri: "https://manage.office.com/api/v1.0/t1/activity/feed/audit/a$b".into(),
            content_created: t,
            content_expiration: t + chrono::Duration::days(7),
            listed_at: t,
            attempt: 0,
            not_before: None,
            last_error: None,
            reason: None,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(
            json.contains("\"content_created\":\"2026-11-27T10:00:00.000Z\""),
            "{json}"
        );
        assert!(!json.contains("not_before"), "{json}");
        let back: UriMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.key(), "t1/Audit.Exchange");
    }
}
