//! tansu 0.6's consumer-group coordinator, seen from its sqlite storage: finding a group
//! stuck by one of its two bugs, and resetting the group's membership state (not its
//! committed offsets) while the broker is stopped.
//!
//! The bugs (tansu-broker 0.6.0, `coordinator/group/administrator.rs`):
//! - **A — formed with nothing assigned.** When the leader of a forming group is dropped for
//!   a missed heartbeat, the group has no leader; the next `SyncGroup` is then accepted from
//!   any member, and a follower's carries no assignments. The group becomes `Formed` with no
//!   partition assigned; every member heartbeats happily and consumes nothing, for ever.
//! - **B — waiting for a leader that left.** `LeaveGroup` in a forming group removes the
//!   member but keeps it as the leader. Every later `SyncGroup` comes from a non-leader and
//!   is answered "rebalance in progress", for ever; no member gets a partition.
//!
//! Both survive a broker restart (the group state is in the database). The driver's repair:
//! stop the broker, delete the group's row of `consumer_group_detail` (its members and
//! state; `consumer_offset` keeps the committed offsets), start the broker; the members then
//! join a fresh group and resume from their committed offsets.
//!
//! The `sqlite3` command-line shell does the reading and the one write (no sqlite library in
//! the build); without it this check is off and the report says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors of reading or repairing tansu's database.
#[derive(Debug, thiserror::Error)]
pub enum TansuError {
    /// The `sqlite3` shell could not be run.
    #[error("running sqlite3: {0}")]
    Spawn(#[source] std::io::Error),
    /// It ran and failed.
    #[error("sqlite3 failed on {db}: {stderr}")]
    Failed {
        /// The database.
        db: String,
        /// What it printed.
        stderr: String,
    },
    /// Its output was not what was asked for.
    #[error("unexpected sqlite3 output: {0}")]
    Parse(String),
}

/// Whether the `sqlite3` shell is available.
pub fn sqlite3_available() -> bool {
    Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sqlite3(db: &Path, readonly: bool, sql: &str) -> Result<String, TansuError> {
    let mut cmd = Command::new("sqlite3");
    if readonly {
        cmd.arg("-readonly");
    }
    // A busy broker holds the write lock only briefly.
    cmd.args(["-json", "-cmd", ".timeout 5000"])
        .arg(db)
        .arg(sql);
    let out = cmd.output().map_err(TansuError::Spawn)?;
    if !out.status.success() {
        return Err(TansuError::Failed {
            db: db.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rows(out: &str) -> Result<Vec<serde_json::Value>, TansuError> {
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(out).map_err(|e| TansuError::Parse(format!("{e}: {out:.200}")))
}

/// A group found stuck by one of the bugs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckGroup {
    /// Group id.
    pub group: String,
    /// Which bug, with the evidence.
    pub why: String,
}

/// Reads every group's state from tansu's database at `db` and returns those stuck by bug A
/// or B. `partitions` gives, per group, the topics it reads (to tell whether every
/// partition is assigned).
pub fn stuck_groups(
    db: &Path,
    topics_of: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<StuckGroup>, TansuError> {
    let counts = rows(&sqlite3(
        db,
        true,
        "select t.name as topic, count(*) as n from topition tp join topic t on t.id = tp.topic group by t.name",
    )?)?;
    let partitions: BTreeMap<String, i64> = counts
        .iter()
        .filter_map(|r| Some((r["topic"].as_str()?.to_owned(), r["n"].as_i64()?)))
        .collect();
    let groups = rows(&sqlite3(
        db,
        true,
        "select g.name as name, d.detail as detail from consumer_group g join consumer_group_detail d on d.consumer_group = g.id",
    )?)?;
    let mut out = Vec::new();
    for g in groups {
        let (Some(name), Some(detail)) = (g["name"].as_str(), g["detail"].as_str()) else {
            continue;
        };
        let detail: serde_json::Value = serde_json::from_str(detail)
            .map_err(|e| TansuError::Parse(format!("detail of {name}: {e}")))?;
        let wanted: BTreeSet<(String, i32)> = topics_of
            .get(name)
            .into_iter()
            .flatten()
            .flat_map(|t| {
                let n = partitions.get(t).copied().unwrap_or(0);
                (0..n).map(move |p| (t.clone(), p as i32))
            })
            .collect();
        if let Some(why) = diagnose_group(&detail, &wanted) {
            out.push(StuckGroup {
                group: name.to_owned(),
                why,
            });
        }
    }
    Ok(out)
}

/// Bug A or B in one group's stored detail, with the evidence; `wanted` is every partition
/// of the topics it reads.
pub fn diagnose_group(
    detail: &serde_json::Value,
    wanted: &BTreeSet<(String, i32)>,
) -> Option<String> {
    let members: BTreeSet<&str> = detail["members"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if members.is_empty() {
        return None;
    }
    let generation = detail["generation_id"].as_i64().unwrap_or(-1);
    if let Some(leader) = detail["state"]["Forming"]["leader"].as_str()
        && !members.contains(leader)
    {
        return Some(format!(
            "bug B: forming (generation {generation}) for a leader that left ({leader}); members: {}",
            members.iter().copied().collect::<Vec<_>>().join(", ")
        ));
    }
    let formed = &detail["state"]["Formed"];
    if formed.is_object() && !wanted.is_empty() {
        let mut assigned = BTreeSet::new();
        if let Some(a) = formed["assignments"].as_object() {
            for bytes in a.values() {
                let bytes: Vec<u8> = bytes
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect();
                assigned.extend(decode_assignment(&bytes).unwrap_or_default());
            }
        }
        let missing: Vec<String> = wanted
            .difference(&assigned)
            .map(|(t, p)| format!("{t}/{p}"))
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "bug A: formed (generation {generation}) with {} of {} partitions unassigned ({}); members: {}",
                missing.len(),
                wanted.len(),
                missing.join(" "),
                members.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    None
}

/// The (topic, partition) pairs of a Kafka consumer-protocol assignment.
pub fn decode_assignment(b: &[u8]) -> Option<Vec<(String, i32)>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let _version = take(2)?;
    let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let name = String::from_utf8(take(usize::try_from(len).ok()?)?.to_vec()).ok()?;
        let n = i32::from_be_bytes(take(4)?.try_into().ok()?);
        for _ in 0..n.max(0) {
            out.push((name.clone(), i32::from_be_bytes(take(4)?.try_into().ok()?)));
        }
    }
    Some(out)
}

/// Deletes the membership state of `groups` (their committed offsets stay). Only while the
/// broker is stopped.
pub fn reset_groups(db: &Path, groups: &[String]) -> Result<(), TansuError> {
    let names = groups
        .iter()
        .map(|g| format!("'{}'", g.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ");
    sqlite3(
        db,
        false,
        &format!(
            "delete from consumer_group_detail where consumer_group in (select id from consumer_group where name in ({names}))"
        ),
    )?;
    Ok(())
}

/// The broker's database file in its folder.
pub fn db_path(broker_dir: &Path) -> PathBuf {
    broker_dir.join("broker.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topic: &str, parts: &[i32]) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0, 0, 1];
        b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
        b.extend_from_slice(topic.as_bytes());
        b.extend_from_slice(&(parts.len() as i32).to_be_bytes());
        for p in parts {
            b.extend_from_slice(&p.to_be_bytes());
        }
        b.extend_from_slice(&[0, 0, 0, 0]);
        b
    }

    fn wanted(topic: &str, n: i32) -> BTreeSet<(String, i32)> {
        (0..n).map(|p| (topic.to_owned(), p)).collect()
    }

    // Proves bug B is recognised: a forming group whose leader is not among its members.
    #[test]
    fn recognises_a_leader_that_left() {
        let d = serde_json::json!({
            "generation_id": 65,
            "members": {"m-live": {}},
            "state": {"Forming": {"leader": "m-gone"}}
        });
        let why = diagnose_group(&d, &wanted("chaos.events", 3)).unwrap();
        assert!(why.starts_with("bug B") && why.contains("m-gone"), "{why}");
        let ok = serde_json::json!({
            "generation_id": 3,
            "members": {"m-live": {}},
            "state": {"Forming": {"leader": "m-live"}}
        });
        assert_eq!(diagnose_group(&ok, &wanted("chaos.events", 3)), None);
    }

    // Proves bug A is recognised from the stored assignment bytes, and a full assignment
    // (the bytes tansu stores, as seen in a real run) is not.
    #[test]
    fn recognises_unassigned_partitions() {
        let empty = serde_json::json!({
            "generation_id": 4,
            "members": {"m1": {}},
            "state": {"Formed": {"assignments": {}, "leader": "m1"}}
        });
        let why = diagnose_group(&empty, &wanted("chaos.uris", 3)).unwrap();
        assert!(why.starts_with("bug A") && why.contains("3 of 3"), "{why}");
        let full = serde_json::json!({
            "generation_id": 10,
            "members": {"m1": {}},
            "state": {"Formed": {"assignments": {"m1": [0,0,0,0,0,1,0,10,99,104,97,111,115,46,117,114,105,115,0,0,0,3,0,0,0,0,0,0,0,1,0,0,0,2,0,0,0,0]}, "leader": "m1"}}
        });
        assert_eq!(diagnose_group(&full, &wanted("chaos.uris", 3)), None);
        let part = serde_json::json!({
            "generation_id": 11,
            "members": {"m1": {}},
            "state": {"Formed": {"assignments": {"m1": assignment("chaos.uris", &[0, 2])}, "leader": "m1"}}
        });
        let why = diagnose_group(&part, &wanted("chaos.uris", 3)).unwrap();
        assert!(why.contains("chaos.uris/1"), "{why}");
    }

    // Proves an assignment is decoded into its topic partitions and a truncated one is not.
    #[test]
    fn decodes_assignments() {
        let b = assignment("t", &[4, 7]);
        assert_eq!(
            decode_assignment(&b),
            Some(vec![("t".to_owned(), 4), ("t".to_owned(), 7)])
        );
        assert_eq!(decode_assignment(&b[..b.len() - 8]), None);
    }
}
