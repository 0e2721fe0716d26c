//! The comparison of what Devo received with the simulator's truth, and the table.
//!
//! A record is *expected* when a blob published before the cutoff holds it. It is excused
//! only when every such blob was really expired by the simulator AND Devo received a gap
//! record naming it: that data could no longer be had and the operator was told. Every
//! other expected record that never arrived is *lost*. A gap record is *valid* when it names
//! a blob the simulator expired.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use m365_sim::tenant::Truth;

use crate::plan::FaultKind;
use crate::received::Received;

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Seed of the plan.
    pub seed: u64,
    /// Trials run, per kind.
    pub trials: BTreeMap<FaultKind, u64>,
    /// Distinct record ids expected at Devo.
    pub records: u64,
    /// Distinct expected ids that arrived.
    pub delivered: u64,
    /// Expected ids that never arrived (and were not excused by a valid gap).
    pub lost: u64,
    /// Some lost ids, for the investigation.
    pub lost_sample: Vec<String>,
    /// Blobs holding lost records: content id → (content type, records lost).
    pub lost_blobs: BTreeMap<String, (String, u64)>,
    /// Lost record ids per blob.
    pub lost_ids_by_blob: BTreeMap<String, Vec<String>>,
    /// Where the lost records stopped, one line per blob (filled by the driver).
    pub diagnosis: Vec<String>,
    /// Receptions beyond the first of a record.
    pub duplicates: u64,
    /// The duplicates split by origin (None: not read).
    pub duplicate_origins: Option<crate::diagnose::DuplicateOrigins>,
    /// Receptions of records in total.
    pub receptions: u64,
    /// Records that arrived but were published after the cutoff (not counted above).
    pub newer: u64,
    /// Records that arrived but the tenant never published.
    pub bogus: u64,
    /// Gap records received.
    pub gap_records: u64,
    /// Gap records naming a blob the simulator really expired.
    pub gaps_valid: u64,
    /// Gap records that do not (e.g. blobs dead-lettered while still available).
    pub gaps_invalid: Vec<String>,
    /// Expected records excused by a valid gap.
    pub excused: u64,
    /// Stages or broker that ended on their own (restarted by the driver), with how.
    pub unexpected_exits: Vec<String>,
    /// Times the broker stopped answering and the watchdog restarted it (not an injected
    /// fault).
    pub broker_stalls: Vec<String>,
    /// Consumer groups stuck by a tansu coordinator bug whose membership state the watchdog
    /// reset (not an injected fault).
    pub group_repairs: Vec<String>,
    /// Times a stage had records waiting but committed nothing for long, and the watchdog
    /// stopped it cleanly and started it again (not an injected fault).
    pub stage_stalls: Vec<String>,
    /// Whether the stages joined their groups with static membership.
    pub static_membership: bool,
    /// Whether the drain ended with everything delivered (false: timed out).
    pub drained: bool,
    /// Time the trials took.
    pub trials_time: Duration,
    /// Time from the end of the trials until complete (or the timeout).
    pub drain_time: Duration,
}

impl Report {
    /// Success: nothing lost and every gap valid.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.gaps_invalid.is_empty() && self.bogus == 0 && self.records > 0
    }

    /// Total trials.
    pub fn trial_count(&self) -> u64 {
        self.trials.values().sum()
    }

    /// Duplicates per delivered record, in percent.
    pub fn duplicate_rate(&self) -> f64 {
        if self.delivered == 0 {
            0.0
        } else {
            self.duplicates as f64 * 100.0 / self.delivered as f64
        }
    }
}

/// Compares `received` with `truth` for blobs visible before `cutoff`.
pub fn compare(truth: &Truth, received: &Received, cutoff: DateTime<Utc>) -> Report {
    let gap_blobs: HashSet<&str> = received
        .gaps
        .iter()
        .filter_map(|g| g.content_id.as_deref())
        .collect();
    // Every blob by content id (for gap validation), and the expected records.
    let mut expired: HashSet<&str> = HashSet::new();
    let mut all_blobs: HashSet<&str> = HashSet::new();
    let mut published_ids: HashSet<&str> = HashSet::new();
    // id → (content id, content type) of a blob that requires it.
    let mut required: HashMap<&str, (&str, &str)> = HashMap::new();
    let mut excusable: HashSet<&str> = HashSet::new();
    for streams in truth.tenants.values() {
        for (ct, s) in streams {
            for b in &s.blobs {
                all_blobs.insert(&b.content_id);
                if b.expired {
                    expired.insert(&b.content_id);
                }
                if !b.published {
                    continue;
                }
                published_ids.extend(b.record_ids.iter().map(String::as_str));
                if b.visible_at >= cutoff {
                    continue;
                }
                let excused = b.expired && gap_blobs.contains(b.content_id.as_str());
                for id in b.record_ids.iter().filter(|id| !id.is_empty()) {
                    if excused {
                        excusable.insert(id);
                    } else {
                        required.insert(id, (&b.content_id, ct));
                    }
                }
            }
        }
    }
    let mut r = Report {
        records: required.len() as u64,
        ..Report::default()
    };
    for (id, (blob, ct)) in &required {
        if received.ids.contains_key(*id) {
            r.delivered += 1;
        } else {
            r.lost += 1;
            if r.lost_sample.len() < 10 {
                r.lost_sample.push((*id).to_owned());
            }
            let e = r
                .lost_blobs
                .entry((*blob).to_owned())
                .or_insert_with(|| ((*ct).to_owned(), 0));
            e.1 += 1;
            r.lost_ids_by_blob
                .entry((*blob).to_owned())
                .or_default()
                .push((*id).to_owned());
        }
    }
    r.excused = excusable
        .iter()
        .filter(|id| !required.contains_key(**id) && !received.ids.contains_key(**id))
        .count() as u64;
    r.duplicates = received.duplicates();
    r.receptions = received.receptions();
    for id in received.ids.keys() {
        if required.contains_key(id.as_str()) || excusable.contains(id.as_str()) {
            continue;
        }
        if published_ids.contains(id.as_str()) {
            r.newer += 1;
        } else {
            r.bogus += 1;
        }
    }
    r.gap_records = received.gaps.len() as u64;
    for g in &received.gaps {
        match g.content_id.as_deref() {
            Some(c) if expired.contains(c) => r.gaps_valid += 1,
            Some(c) if all_blobs.contains(c) => r.gaps_invalid.push(format!(
                "{c} ({}): the simulator never expired it; reason: {}",
                g.content_type, g.reason
            )),
            Some(c) => r
                .gaps_invalid
                .push(format!("{c}: no such blob; reason: {}", g.reason)),
            None => r.gaps_invalid.push(format!(
                "{}: a gap without a blob; reason: {}",
                g.content_type, g.reason
            )),
        }
    }
    r
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        writeln!(
            f,
            "m365-chaos, seed {}: {} trials in {:.0} s, drain {:.0} s{}",
            self.seed,
            self.trial_count(),
            self.trials_time.as_secs_f64(),
            self.drain_time.as_secs_f64(),
            if self.drained { "" } else { " (timed out)" }
        )?;
        writeln!(f)?;
        writeln!(f, "{:<40} {:>7}", "fault (with its recovery)", "trials")?;
        for (kind, n) in &self.trials {
            writeln!(f, "{:<40} {n:>7}", kind.label())?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:>7} {:>9} {:>9} {:>6} {:>11} {:>9} {:>13} {:>14}",
            "trials",
            "records",
            "received",
            "lost",
            "duplicates",
            "dup rate",
            "gap records",
            "gaps matched"
        )?;
        writeln!(
            f,
            "{:>7} {:>9} {:>9} {:>6} {:>11} {:>8.3}% {:>13} {:>14}",
            self.trial_count(),
            self.records,
            self.delivered,
            self.lost,
            self.duplicates,
            self.duplicate_rate(),
            self.gap_records,
            format!("{}/{}", self.gaps_valid, self.gap_records),
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "records: distinct ids in blobs published before the last trial ended; {} more arrived from newer blobs; {} excused by a gap on an expired blob; {} never published",
            self.newer, self.excused, self.bogus
        )?;
        writeln!(
            f,
            "dup rate: receptions beyond the first per distinct record received ({} receptions); group membership: {}",
            self.receptions,
            if self.static_membership {
                "static (group.instance.id)"
            } else {
                "dynamic"
            }
        )?;
        if let Some(o) = &self.duplicate_origins {
            writeln!(
                f,
                "duplicates by origin: {} on the events topic more than once (consumer/producer), {} sent again by the forwarder",
                o.upstream, o.forwarder
            )?;
        }
        writeln!(
            f,
            "watchdog (not injected faults): {} broker restart(s) for not answering, {} tansu group repair(s), {} stage restart(s) for no progress",
            self.broker_stalls.len(),
            self.group_repairs.len(),
            self.stage_stalls.len()
        )?;
        for e in self
            .broker_stalls
            .iter()
            .chain(&self.group_repairs)
            .chain(&self.stage_stalls)
        {
            writeln!(f, "  {e}")?;
        }
        if !self.unexpected_exits.is_empty() {
            writeln!(
                f,
                "processes that ended on their own (restarted): {}",
                self.unexpected_exits.len()
            )?;
            for e in &self.unexpected_exits {
                writeln!(f, "  {e}")?;
            }
        }
        for g in &self.gaps_invalid {
            writeln!(f, "INVALID GAP: {g}")?;
        }
        if self.lost > 0 {
            writeln!(
                f,
                "LOST records by blob (content id, content type, lost):{}",
                if self.drained {
                    ""
                } else {
                    " (the drain timed out: see the group lines for what still sits in Kafka)"
                }
            )?;
            for (blob, (ct, n)) in self.lost_blobs.iter().take(20) {
                writeln!(f, "  {blob} {ct} {n}")?;
            }
            writeln!(f, "  e.g. ids {:?}", self.lost_sample)?;
            for d in &self.diagnosis {
                writeln!(f, "  {d}")?;
            }
        }
        writeln!(
            f,
            "result: {}",
            if self.passed() {
                "PASS (0 lost, every gap matches an expired blob)"
            } else {
                "FAIL"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::received::GapSeen;
    use m365_sim::tenant::{BlobTruth, StreamTruth};

    fn blob(id: &str, ids: &[&str], expired: bool, at: DateTime<Utc>) -> BlobTruth {
        BlobTruth {
            content_id: id.into(),
            content_created: at,
            content_expiration: at,
            visible_at: at,
            record_ids: ids.iter().map(|s| s.to_string()).collect(),
            published: true,
            expired,
            times_listed: 1,
            times_downloaded: 0,
        }
    }

    // Proves lost, duplicate, newer and gap accounting: an expired blob with a gap is
    // excused, one without a gap is lost, a gap on a live blob is invalid.
    #[test]
    fn compares_received_with_truth() {
        let t0 = Utc::now();
        let cutoff = t0 + chrono::Duration::seconds(10);
        let late = t0 + chrono::Duration::seconds(20);
        let stream = StreamTruth {
            blobs: vec![
                blob("b1", &["r1", "r2"], false, t0),
                blob("b2", &["r3"], true, t0),
                blob("b3", &["r4"], true, t0),
                blob("b4", &["r5"], false, late),
            ],
            ..StreamTruth::default()
        };
        let mut truth = Truth::default();
        truth
            .tenants
            .entry("t".into())
            .or_default()
            .insert("Audit.Exchange".into(), stream);
        let mut got = Received::default();
        got.ids.insert("r1".into(), 3);
        got.ids.insert("r5".into(), 1);
        got.gaps = vec![
            GapSeen {
                content_id: Some("b2".into()),
                content_type: "Audit.Exchange".into(),
                reason: "expired".into(),
            },
            GapSeen {
                content_id: Some("b1".into()),
                content_type: "Audit.Exchange".into(),
                reason: "dead".into(),
            },
        ];
        let r = compare(&truth, &got, cutoff);
        assert_eq!(r.records, 3, "r1, r2 and r4 (b3 expired without a gap)");
        assert_eq!(r.lost, 2);
        assert_eq!(r.excused, 1);
        assert_eq!(r.duplicates, 2);
        assert_eq!(r.newer, 1);
        assert_eq!(r.gaps_valid, 1);
        assert_eq!(r.gaps_invalid.len(), 1);
        assert!(!r.passed());
    }
}
