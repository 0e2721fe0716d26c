//! Status and gap records for the `m365.health` topic (design.md §8). The forwarder sends
//! them to Devo under the health tag, so an inactivity alert can watch our own output.
//!
//! Field names follow what Devo's own collectors write to `devo.collectors.out`
//! (`collector_name`, `input_name`, `service_name`, `level`, `msg`), plus `job_id`, counters,
//! and — for gap records — exactly which data could not be had.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::kafka::OutRecord;

/// The `collector_name` of every record we write.
pub const COLLECTOR_NAME: &str = "m365-devo";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

/// What a health record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Start,
    Stop,
    Heartbeat,
    Error,
    /// Data that can no longer be collected: a clamped listing window or a dead blob.
    Gap,
}

/// Details of a gap: which stream, which time range, which blob, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub tenant_id: String,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    #[serde(with = "crate::envelope::rfc3339_z")]
    pub start: DateTime<Utc>,
    #[serde(with = "crate::envelope::rfc3339_z")]
    pub end: DateTime<Utc>,
    pub reason: String,
}

/// One record on `m365.health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub version: u32,
    #[serde(with = "crate::envelope::rfc3339_z")]
    pub time: DateTime<Utc>,
    pub collector_name: String,
    /// The tenant (or `office365` for process-wide records).
    pub input_name: String,
    /// The stage or service: `producer`, `consumer`, `uri_retry`, `forwarder`, or a content type.
    pub service_name: String,
    pub level: Level,
    pub kind: Kind,
    pub msg: String,
    /// Identifies the process run that wrote the record.
    pub job_id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Gap>,
}

impl HealthRecord {
    pub fn new(
        job_id: &str,
        input_name: &str,
        service_name: &str,
        level: Level,
        kind: Kind,
        msg: impl Into<String>,
    ) -> Self {
        Self {
            version: crate::envelope::ENVELOPE_VERSION,
            time: Utc::now(),
            collector_name: COLLECTOR_NAME.into(),
            input_name: input_name.into(),
            service_name: service_name.into(),
            level,
            kind,
            msg: msg.into(),
            job_id: job_id.into(),
            counters: BTreeMap::new(),
            gap: None,
        }
    }

    /// A gap record: data in `gap` can no longer be collected.
    pub fn gap(job_id: &str, service_name: &str, gap: Gap) -> Self {
        let msg = match &gap.content_id {
            Some(id) => format!(
                "Blob {id} of {} {} ({} to {}) is lost: {}.",
                gap.tenant_id,
                gap.content_type,
                crate::envelope::format_time(&gap.start),
                crate::envelope::format_time(&gap.end),
                gap.reason
            ),
            None => format!(
                "Content of {} {} from {} to {} is lost: {}.",
                gap.tenant_id,
                gap.content_type,
                crate::envelope::format_time(&gap.start),
                crate::envelope::format_time(&gap.end),
                gap.reason
            ),
        };
        let mut r = Self::new(
            job_id,
            &gap.tenant_id.clone(),
            service_name,
            Level::Error,
            Kind::Gap,
            msg,
        );
        r.gap = Some(gap);
        r
    }

    pub fn with_counter(mut self, name: &str, value: u64) -> Self {
        self.counters.insert(name.into(), value);
        self
    }

    /// The record as a message for `topic`, keyed by input so one input's records stay in order.
    pub fn to_record(&self, topic: &str) -> OutRecord {
        // Serialising a struct of strings, numbers and maps with string keys cannot fail.
        let payload = serde_json::to_vec(self).unwrap_or_default();
        OutRecord::new(topic, self.input_name.clone(), payload)
    }
}

/// A fresh job id for this process run.
pub fn new_job_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    // A gap record names tenant, content type, blob, time range and reason, in JSON and in msg.
    #[test]
    fn gap_record_names_everything() {
        let t = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap();
        let r = HealthRecord::gap(
            "job",
            "uri_retry",
            Gap {
                tenant_id: "t1".into(),
                content_type: "Audit.Exchange".into(),
                content_id: Some("c$1".into()),
                start: t,
                end: t + chrono::Duration::hours(1),
                reason: "expired (AF20051)".into(),
            },
        );
        let v: serde_json::Value =
            serde_json::from_slice(&r.to_record("m365.health").payload.unwrap()).unwrap();
        assert_eq!(v["kind"], "gap");
        assert_eq!(v["level"], "error");
        assert_eq!(v["gap"]["content_id"], "c$1");
        assert_eq!(v["collector_name"], COLLECTOR_NAME);
        assert!(
            r.msg.contains("c$1") && r.msg.contains("AF20051"),
            "{}",
            r.msg
        );
    }
}
