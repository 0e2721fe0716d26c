//! What the fake Devo received, read incrementally from the files it writes
//! (`--devo-out DIR`, one `<tag>.log` per tag, one rebuilt syslog line per event): how many
//! times each audit record id arrived, and the gap records among the health records.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use m365_common::health::{HealthRecord, Kind};

/// One gap record as Devo received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapSeen {
    /// The blob it names, if any (a clamped listing window names none).
    pub content_id: Option<String>,
    /// Content type.
    pub content_type: String,
    /// Why the data could not be had.
    pub reason: String,
}

/// Everything read so far.
#[derive(Debug, Default)]
pub struct Received {
    dir: PathBuf,
    health_file: String,
    offsets: HashMap<PathBuf, u64>,
    /// Record id → times received.
    pub ids: HashMap<String, u32>,
    /// Gap records, in arrival order.
    pub gaps: Vec<GapSeen>,
    /// Health records other than gaps, by kind.
    pub health: BTreeMap<String, u64>,
    /// Lines that were neither a record with an `Id` nor a health record.
    pub unparsable: u64,
}

impl Received {
    /// Reads the files under `dir`; health records arrive under `health_tag`.
    pub fn new(dir: &Path, health_tag: &str) -> Received {
        Received {
            dir: dir.to_path_buf(),
            health_file: m365_sim::devo::tag_file_name(health_tag),
            ..Received::default()
        }
    }

    /// Total receptions of audit records (counting duplicates).
    pub fn receptions(&self) -> u64 {
        self.ids.values().map(|&n| u64::from(n)).sum()
    }

    /// Receptions beyond the first of each record.
    pub fn duplicates(&self) -> u64 {
        self.ids
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum()
    }

    /// Reads every complete line appended since the last call.
    pub fn poll(&mut self) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            // Nothing received yet: the folder appears with the first event.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        files.sort();
        for path in files {
            let is_health = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == self.health_file);
            let start = self.offsets.get(&path).copied().unwrap_or(0);
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(start))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            // Only complete lines; a partly written one is read next time.
            let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
                continue;
            };
            for line in buf[..end].split(|&b| b == b'\n') {
                self.absorb(line, is_health);
            }
            self.offsets.insert(path, start + end as u64 + 1);
        }
        Ok(())
    }

    fn absorb(&mut self, line: &[u8], is_health: bool) {
        // `<PRI>DATE HOST TAG: {json}`: the message is the JSON from the first brace.
        let Some(brace) = line.iter().position(|&b| b == b'{') else {
            self.unparsable += 1;
            return;
        };
        let message = &line[brace..];
        if is_health {
            match serde_json::from_slice::<HealthRecord>(message) {
                Ok(h) if h.kind == Kind::Gap => {
                    let (content_id, content_type, reason) = match h.gap {
                        Some(g) => (g.content_id, g.content_type, g.reason),
                        None => (None, String::new(), h.msg),
                    };
                    self.gaps.push(GapSeen {
                        content_id,
                        content_type,
                        reason,
                    });
                }
                Ok(h) => {
                    let kind = serde_json::to_value(h.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    *self.health.entry(kind).or_default() += 1;
                }
                Err(_) => self.unparsable += 1,
            }
            return;
        }
        #[derive(serde::Deserialize)]
        struct IdOnly {
            #[serde(rename = "Id")]
            id: String,
        }
        match serde_json::from_slice::<IdOnly>(message) {
            Ok(r) => *self.ids.entry(r.id).or_default() += 1,
            Err(_) => self.unparsable += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves records are counted per id across polls, a partial last line waits for its
    // end, and gap records are picked out of the health file.
    #[test]
    fn tails_record_and_health_files() {
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path().join("cloud.office365.management.exchange.log");
        let health = dir.path().join("my.app.health.log");
        std::fs::write(
            &rec,
            "<14>Nov 28 00:00:00 h cloud.office365.management.exchange: {\"Id\":\"a\",\"X\":1}\n<14>Nov 28 00:00:00 h cloud.office365.management.exchange: {\"Id\":\"b\"",
        )
        .unwrap();
        let gap = r#"{"version":1,"time":"2026-11-28T00:00:00Z","collector_name":"m365-devo","input_name":"t","service_name":"consumer","level":"warning","kind":"gap","msg":"m","job_id":"j","gap":{"tenant_id":"t","content_type":"Audit.Exchange","content_id":"c1","start":"2026-11-28T00:00:00Z","end":"2026-11-28T00:00:00Z","reason":"expired"}}"#;
        std::fs::write(
            &health,
            format!("<14>Nov 28 00:00:00 h my.app.health: {gap}\n"),
        )
        .unwrap();
        let mut r = Received::new(dir.path(), "my.app.health");
        r.poll().unwrap();
        assert_eq!(r.ids.get("a"), Some(&1));
        assert!(!r.ids.contains_key("b"));
        let mut f = std::fs::OpenOptions::new().append(true).open(&rec).unwrap();
        std::io::Write::write_all(&mut f, b"}\n<14>Nov 28 00:00:00 h t: {\"Id\":\"a\"}\n").unwrap();
        r.poll().unwrap();
        assert_eq!(r.ids.get("a"), Some(&2));
        assert_eq!(r.ids.get("b"), Some(&1));
        assert_eq!(r.duplicates(), 1);
        assert_eq!(r.gaps.len(), 1);
        assert_eq!(r.gaps[0].content_id.as_deref(), Some("c1"));
    }
}
