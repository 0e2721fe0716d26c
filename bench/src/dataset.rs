//! The data every measurement shares: audit records made once by the simulator's own
//! generator (those of 0.5–1.6 KB are kept: about 1 KB each; the five content types in turn), grouped into blobs. Every
//! tool — the stages, serde_json, devo-sdk, rsyslog — sees exactly these records.

use anyhow::Context;
use m365_common::tags::tag_for_workload;
use m365_sim::tenant::config::ContentType;
use m365_sim::{SimConfig, Simulator};

/// Smallest record kept from the generator, bytes.
pub const RECORD_BYTES_MIN: usize = 500;
/// Largest record kept from the generator, bytes.
pub const RECORD_BYTES_MAX: usize = 1600;

/// The tenant the generator renders records for.
pub const GEN_TENANT: &str = "3b7a1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

/// One generated audit record.
#[derive(Debug, Clone)]
pub struct Record {
    /// The exact JSON bytes served.
    pub json: String,
    /// The Devo tag the forwarder gives it (from `Workload`).
    pub tag: String,
}

/// One content blob: records of one content type.
#[derive(Debug, Clone)]
pub struct Blob {
    pub content_type: ContentType,
    pub records: Vec<Record>,
}

impl Blob {
    /// The body the API serves: a JSON array of the records.
    pub fn body(&self) -> Vec<u8> {
        let size: usize = self.records.iter().map(|r| r.json.len() + 1).sum();
        let mut body = Vec::with_capacity(size + 2);
        body.push(b'[');
        for (i, r) in self.records.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(r.json.as_bytes());
        }
        body.push(b']');
        body
    }

    /// The records' JSON strings, for publishing in the simulator.
    pub fn record_strings(&self) -> Vec<String> {
        self.records.iter().map(|r| r.json.clone()).collect()
    }

    pub fn record_bytes(&self) -> u64 {
        self.records.iter().map(|r| r.json.len() as u64).sum()
    }
}

/// The blobs of one data set.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub blobs: Vec<Blob>,
}

impl Dataset {
    pub fn records(&self) -> u64 {
        self.blobs.iter().map(|b| b.records.len() as u64).sum()
    }

    /// Bytes of the records themselves (what MB/s figures count).
    pub fn record_bytes(&self) -> u64 {
        self.blobs.iter().map(Blob::record_bytes).sum()
    }

    pub fn mean_record_bytes(&self) -> f64 {
        self.record_bytes() as f64 / self.records().max(1) as f64
    }

    /// Every record, blob after blob.
    pub fn iter_records(&self) -> impl Iterator<Item = &Record> {
        self.blobs.iter().flat_map(|b| b.records.iter())
    }
}

/// Makes records with the simulator's generator.
pub struct Generator {
    sim: Simulator,
    next_type: usize,
    /// Content types in the rotation: those whose generated records come in ~1 KB sizes.
    pub content_types: Vec<ContentType>,
    /// Content types left out because the generator makes no ~1 KB records of them.
    pub left_out: Vec<ContentType>,
}

impl Generator {
    /// Starts a private, quiet simulator used only to render records.
    pub async fn start(seed: u64) -> anyhow::Result<Generator> {
        let mut cfg = SimConfig::for_tests(&[GEN_TENANT]);
        cfg.history_hours = 0.0;
        cfg.live_generation = false;
        cfg.tls = false;
        cfg.seed = seed;
        cfg.faults = Default::default();
        let sim = Simulator::start(cfg)
            .await
            .context("starting the record generator (simulator)")?;
        let mut g = Generator {
            sim,
            next_type: 0,
            content_types: Vec::new(),
            left_out: Vec::new(),
        };
        for ct in ContentType::ALL {
            match g.records(ct, 20) {
                Ok(_) => g.content_types.push(ct),
                Err(_) => g.left_out.push(ct),
            }
        }
        anyhow::ensure!(
            !g.content_types.is_empty(),
            "the generator makes no records of {RECORD_BYTES_MIN}–{RECORD_BYTES_MAX} bytes"
        );
        Ok(g)
    }

    /// `count` records of `content_type`, each with a fresh `Id`, of
    /// [`RECORD_BYTES_MIN`]..=[`RECORD_BYTES_MAX`] bytes (the generator's records run from a
    /// few hundred bytes to tens of KB; the benchmark keeps the ~1 KB ones).
    pub fn records(&self, content_type: ContentType, count: usize) -> anyhow::Result<Vec<Record>> {
        let mut out = Vec::with_capacity(count);
        for _ in 0..5 {
            let batch = (count - out.len()).clamp(16, 20_000) * 2;
            for r in self.raw_records(content_type, batch)? {
                if (RECORD_BYTES_MIN..=RECORD_BYTES_MAX).contains(&r.json.len())
                    && out.len() < count
                {
                    out.push(r);
                }
            }
            if out.len() == count {
                return Ok(out);
            }
        }
        anyhow::bail!(
            "the generator makes too few {} records of {RECORD_BYTES_MIN}–{RECORD_BYTES_MAX} bytes",
            content_type.as_str()
        )
    }

    /// `count` generated records of `content_type`, any size.
    fn raw_records(&self, content_type: ContentType, count: usize) -> anyhow::Result<Vec<Record>> {
        let id = self
            .sim
            .publish_generated(GEN_TENANT, content_type, count)
            .map_err(|e| anyhow::anyhow!("generating records: {e}"))?;
        let views = self
            .sim
            .blob_records(&id)
            .ok_or_else(|| anyhow::anyhow!("the generator lost blob {id}"))?;
        Ok(views.into_iter().map(|v| record(v.bytes)).collect())
    }

    /// `total` records in blobs of `per_blob`, the content types in turn.
    pub fn dataset(&mut self, total: usize, per_blob: usize) -> anyhow::Result<Dataset> {
        let per_blob = per_blob.max(1);
        let mut blobs = Vec::new();
        let mut left = total;
        while left > 0 {
            let n = left.min(per_blob);
            let ct = self.next_content_type();
            blobs.push(Blob {
                content_type: ct,
                records: self.records(ct, n)?,
            });
            left -= n;
        }
        Ok(Dataset { blobs })
    }

    /// One blob of at least `bytes` body bytes (content type Audit.General).
    pub fn blob_of_size(&self, bytes: u64) -> anyhow::Result<Blob> {
        let ct = self.content_types[0];
        let mut records = Vec::new();
        let mut size = 2u64;
        while size < bytes {
            let chunk = self.records(ct, 5000)?;
            for r in chunk {
                if size >= bytes {
                    break;
                }
                size += r.json.len() as u64 + 1;
                records.push(r);
            }
        }
        Ok(Blob {
            content_type: ct,
            records,
        })
    }

    fn next_content_type(&mut self) -> ContentType {
        let ct = self.content_types[self.next_type % self.content_types.len()];
        self.next_type += 1;
        ct
    }

    pub async fn shutdown(self) {
        self.sim.shutdown().await;
    }
}

/// A record with its Devo tag read from its `Workload`.
fn record(json: String) -> Record {
    #[derive(serde::Deserialize)]
    struct WorkloadOnly {
        #[serde(rename = "Workload")]
        workload: Option<String>,
    }
    let tag = serde_json::from_str::<WorkloadOnly>(&json)
        .ok()
        .and_then(|w| w.workload)
        .filter(|w| !w.is_empty())
        .map(|w| tag_for_workload(&w))
        .unwrap_or_else(|| m365_consumer::settings::DEFAULT_FALLBACK_TAG.to_string());
    Record { json, tag }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A blob body is a JSON array holding exactly the records, in order.
    #[test]
    fn body_is_the_json_array_of_the_records() {
        let blob = Blob {
            content_type: ContentType::ALL[0],
            records: vec![
                record(r#"{"Id":"a","Workload":"Exchange"}"#.into()),
                record(r#"{"Id":"b"}"#.into()),
            ],
        };
        let v: Vec<serde_json::Value> = serde_json::from_slice(&blob.body()).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["Id"], "a");
        assert_eq!(blob.records[0].tag, tag_for_workload("Exchange"));
        assert_eq!(
            blob.records[1].tag,
            m365_consumer::settings::DEFAULT_FALLBACK_TAG
        );
    }

    // The generator makes the asked number of records, spread over blobs, with distinct ids.
    #[tokio::test]
    async fn generator_makes_distinct_records() {
        let mut g = Generator::start(7).await.unwrap();
        let ds = g.dataset(25, 10).unwrap();
        assert_eq!(ds.blobs.len(), 3);
        assert_eq!(ds.records(), 25);
        let ids: std::collections::HashSet<String> = ds
            .iter_records()
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(&r.json).unwrap()["Id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids.len(), 25);
        assert!(
            ds.iter_records()
                .all(|r| (RECORD_BYTES_MIN..=RECORD_BYTES_MAX).contains(&r.json.len()))
        );
        g.shutdown().await;
    }
}
