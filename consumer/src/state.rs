//! Dedup state that survives restarts and partition reassignment, kept in the compacted
//! `m365.state` topic.
//!
//! # Keys (per stream `{tenant}/{content_type}`)
//! * `dedup/{tenant}/{content_type}/g{N}/{i}` — part `i` of snapshot generation `N`
//!   ([`Dedup::to_snapshot_parts`]: versioned, checksummed, hash seed included);
//! * `dedup/{tenant}/{content_type}/meta` — JSON [`SnapshotMeta`]: which generation is
//!   current, its part count, and the end offsets of every `m365.events` partition when it
//!   was taken.
//!
//! A snapshot is written parts first, then the meta record (in one transaction when the broker
//! has them, else in that order, each acknowledged), then tombstones for the previous
//! generation's parts; a crash part-way leaves the previous meta pointing at intact parts.
//!
//! # Loading
//! A stream's filter is loaded when its first URI arrives after an assignment: the snapshot
//! is restored, then every `m365.events` record written after the snapshot's offsets whose
//! `tenant_id`/`content_type` headers name the stream is inserted. So ids produced after the
//! last snapshot — by this instance before a crash, or by the member that owned the partition
//! before a rebalance — are known again, and a replayed blob (ordered mode) or a blob repeated
//! on the topic adds nothing. Without a snapshot, the whole retained `m365.events` is scanned.
//! [`StateStore::load_many`] loads several streams with one read and one scan (the consumer
//! loads the streams whose URIs come to its partitions together), each stream taking only the
//! records at or after its own snapshot's offsets.
//! Snapshots are therefore an optimisation of the scan, written at most every
//! `snapshot_interval` (the first one that long after the filter was loaded) while the filter
//! has news, and on clean shutdown.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use m365_common::envelope::EventHeaders;
use m365_common::kafka::{self, KAFKA_CALL_TIMEOUT, KafkaGlueError, KafkaSettings, OutRecord};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::dedup::{Dedup, DedupSettings};
use crate::internal_events::ConsumerStats;
use crate::kafka_io::Output;

/// Version of [`SnapshotMeta`].
pub const META_VERSION: u32 = 1;

/// One (tenant, content type) stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub tenant_id: String,
    pub content_type: String,
}

impl StreamId {
    pub fn new(tenant_id: &str, content_type: &str) -> Self {
        StreamId {
            tenant_id: tenant_id.to_string(),
            content_type: content_type.to_string(),
        }
    }

    fn prefix(&self) -> String {
        format!("dedup/{}/{}/", self.tenant_id, self.content_type)
    }

    /// Key of the snapshot meta record.
    pub fn meta_key(&self) -> String {
        format!("{}meta", self.prefix())
    }

    fn part_key(&self, generation: u64, index: usize) -> String {
        format!("{}g{generation}/{index}", self.prefix())
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant_id, self.content_type)
    }
}

/// The meta record of a stream's current snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub version: u32,
    /// Snapshot generation; its parts are under `g{generation}/`.
    pub generation: u64,
    /// Number of parts.
    pub parts: u32,
    /// `m365.events` partition → first offset not covered by the snapshot.
    pub events_offsets: BTreeMap<i32, i64>,
    #[serde(with = "m365_common::envelope::rfc3339_z")]
    pub written_at: DateTime<Utc>,
}

/// A stream's filter and its persistence bookkeeping. Owned by the consumer loop while the
/// stream's partition is assigned to it.
pub struct StreamState {
    pub dedup: Dedup,
    /// Generation of the snapshot on `m365.state` (0: none).
    generation: u64,
    /// Keys of the current snapshot's parts (tombstoned when the next one is written).
    part_keys: Vec<String>,
    /// When this process loaded the filter or last wrote its snapshot.
    pub last_snapshot: Instant,
    /// Ids were added since the last snapshot.
    pub dirty: bool,
}

/// A filter being loaded: restored from its snapshot, waiting for the scan.
struct Loading {
    id: StreamId,
    dedup: Dedup,
    /// Per `m365.events` partition, the first offset the snapshot does not cover.
    start: HashMap<i32, i64>,
    generation: u64,
    part_keys: Vec<String>,
}

/// Reads and writes dedup state on `m365.state`.
pub struct StateStore {
    kafka: KafkaSettings,
    part_bytes: usize,
    stats: Arc<ConsumerStats>,
}

impl StateStore {
    pub fn new(kafka: KafkaSettings, part_bytes: usize, stats: Arc<ConsumerStats>) -> Self {
        StateStore {
            kafka,
            part_bytes,
            stats,
        }
    }

    /// Loads a stream's filter: snapshot (if any) plus the `m365.events` written since.
    pub async fn load(
        &self,
        id: &StreamId,
        settings: DedupSettings,
    ) -> Result<StreamState, KafkaGlueError> {
        let mut loaded = self.load_many(vec![(id.clone(), settings)]).await?;
        Ok(loaded.remove(0).1)
    }

    /// Loads several streams' filters (in the order given) with one read of `m365.state` and
    /// one scan of `m365.events`, from the earliest offset any of them needs: each stream
    /// takes only the records at or after its own snapshot's offsets. Loading the streams an
    /// instance owns together costs one scan instead of one each.
    pub async fn load_many(
        &self,
        wanted: Vec<(StreamId, DedupSettings)>,
    ) -> Result<Vec<(StreamId, StreamState)>, KafkaGlueError> {
        let topics = self.kafka.topics();
        let table = kafka::read_table(&self.kafka, &topics.state).await?;
        let loading: Vec<Loading> = wanted
            .into_iter()
            .map(|(id, settings)| self.restore(&table, id, settings))
            .collect();
        drop(table);

        // A partition is scanned from the lowest start any stream has for it, or from the
        // beginning when some stream has none (no snapshot).
        let mut start: HashMap<i32, i64> = HashMap::new();
        let all_have = |p: &i32| loading.iter().all(|l| l.start.contains_key(p));
        for l in &loading {
            for (p, o) in &l.start {
                if all_have(p) {
                    let e = start.entry(*p).or_insert(*o);
                    *e = (*e).min(*o);
                }
            }
        }
        // At most a few streams: a linear search on borrowed headers allocates nothing per record.
        let names: Vec<(String, String)> = loading
            .iter()
            .map(|l| (l.id.tenant_id.clone(), l.id.content_type.clone()))
            .collect();
        let starts: Vec<HashMap<i32, i64>> = loading.iter().map(|l| l.start.clone()).collect();
        let found = Arc::new(Mutex::new(vec![Vec::<String>::new(); loading.len()]));
        let sink = found.clone();
        kafka::scan_topic(&self.kafka, &topics.events, start, move |r| {
            let header = |name: &str| {
                r.headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_slice())
            };
            let (Some(tenant), Some(ct)) = (
                header(EventHeaders::TENANT_ID),
                header(EventHeaders::CONTENT_TYPE),
            ) else {
                return;
            };
            let Some(i) = names
                .iter()
                .position(|(t, c)| t.as_bytes() == tenant && c.as_bytes() == ct)
            else {
                return;
            };
            if starts[i]
                .get(&r.partition)
                .is_some_and(|from| r.offset < *from)
            {
                return;
            }
            if let Some(key) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) {
                sink.lock().unwrap_or_else(|e| e.into_inner())[i].push(key.to_string());
            }
        })
        .await?;
        let found = std::mem::take(&mut *found.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(loading
            .into_iter()
            .zip(found)
            .map(|(mut l, ids)| {
                for rid in &ids {
                    l.dedup.check_and_insert(rid);
                }
                self.stats.dedup_replayed_ids.add(ids.len() as u64);
                info!(stream = %l.id, snapshot_generation = l.generation, replayed_ids = ids.len(), "Dedup filter loaded.");
                let state = StreamState {
                    dedup: l.dedup,
                    generation: l.generation,
                    part_keys: l.part_keys,
                    // The first snapshot comes one interval after loading, not with the first
                    // blob: what the filter holds is on m365.events already, and writing a
                    // whole filter (7.3 MB at the default sizing) per stream at every start
                    // stalled the first blobs (20–80 ms each, measured end to end).
                    last_snapshot: Instant::now(),
                    dirty: !ids.is_empty(),
                };
                (l.id, state)
            })
            .collect())
    }

    /// A stream's filter from its snapshot in `table` (or empty), with where its scan starts.
    fn restore(
        &self,
        table: &BTreeMap<String, Vec<u8>>,
        id: StreamId,
        settings: DedupSettings,
    ) -> Loading {
        let prefix = id.prefix();
        let meta = table
            .get(&id.meta_key())
            .and_then(|v| serde_json::from_slice::<SnapshotMeta>(v).ok())
            .filter(|m| m.version == META_VERSION);
        let mut restored = None;
        if let Some(meta) = &meta {
            let keys: Vec<String> = (0..meta.parts as usize)
                .map(|i| id.part_key(meta.generation, i))
                .collect();
            let parts: Option<Vec<&Vec<u8>>> = keys.iter().map(|k| table.get(k)).collect();
            match parts.map(|p| Dedup::from_snapshot_parts(&p)) {
                Some(Ok(d)) => restored = Some((d, meta.clone(), keys)),
                Some(Err(e)) => {
                    warn!(stream = %id, error = %e, "The dedup snapshot is unusable; rebuilding the filter from m365.events.")
                }
                None => {
                    warn!(stream = %id, "The dedup snapshot is incomplete; rebuilding the filter from m365.events.")
                }
            }
        }
        let (dedup, start, generation, mut part_keys) = match restored {
            Some((d, meta, keys)) => {
                if d.settings() != settings {
                    warn!(stream = %id, "The dedup settings changed since the snapshot; keeping the snapshot's until the filter is rebuilt.");
                }
                self.stats.dedup_restored.inc();
                (
                    d,
                    meta.events_offsets.into_iter().collect::<HashMap<_, _>>(),
                    meta.generation,
                    keys,
                )
            }
            None => (Dedup::new(settings), HashMap::new(), 0, Vec::new()),
        };
        // Stale keys of this stream (orphaned parts of an interrupted snapshot) go too.
        for k in table.keys() {
            if k.starts_with(&prefix) && *k != id.meta_key() && !part_keys.contains(k) {
                part_keys.push(k.clone());
            }
        }
        Loading {
            id,
            dedup,
            start,
            generation,
            part_keys,
        }
    }

    /// Writes a snapshot of `state` (no transaction may be open on `out`; every event of the
    /// stream produced so far must be acknowledged or committed).
    pub async fn save(
        &self,
        id: &StreamId,
        state: &mut StreamState,
        out: &Output,
    ) -> Result<(), KafkaGlueError> {
        let began = Instant::now();
        let topics = self.kafka.topics();
        let events_offsets = end_offsets(&self.kafka, &topics.events).await?;
        let generation = state.generation + 1;
        let parts = state.dedup.to_snapshot_parts(self.part_bytes);
        let meta = SnapshotMeta {
            version: META_VERSION,
            generation,
            parts: parts.len() as u32,
            events_offsets,
            written_at: Utc::now(),
        };
        let keys: Vec<String> = (0..parts.len())
            .map(|i| id.part_key(generation, i))
            .collect();
        let part_records: Vec<OutRecord> = parts
            .into_iter()
            .zip(&keys)
            .map(|(p, k)| OutRecord::new(&topics.state, k.as_bytes(), p))
            .collect();
        // Serialising a struct of numbers, a map and a time cannot fail.
        let meta_record = OutRecord::new(
            &topics.state,
            id.meta_key(),
            serde_json::to_vec(&meta).unwrap_or_default(),
        );
        let tombstones: Vec<OutRecord> = state
            .part_keys
            .iter()
            .filter(|k| !keys.contains(k))
            .map(|k| OutRecord::tombstone(&topics.state, k.as_bytes()))
            .collect();
        out.begin().await?;
        let result = async {
            out.send_all(&part_records).await?;
            out.send_all(std::slice::from_ref(&meta_record)).await?;
            out.send_all(&tombstones).await?;
            out.commit_plain().await
        }
        .await;
        if let Err(e) = result {
            out.abort().await;
            return Err(e);
        }
        tracing::debug!(stream = %id, generation, parts = keys.len(), elapsed_ms = began.elapsed().as_millis() as u64, "Dedup snapshot written.");
        state.generation = generation;
        state.part_keys = keys;
        state.last_snapshot = Instant::now();
        state.dirty = false;
        self.stats.dedup_snapshots.inc();
        Ok(())
    }
}

/// High watermark of every partition of `topic`.
async fn end_offsets(
    settings: &KafkaSettings,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, KafkaGlueError> {
    let consumer: BaseConsumer =
        settings
            .client_config()
            .create()
            .map_err(|source| KafkaGlueError::Client {
                what: "watermarks",
                source,
            })?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let md = consumer
            .fetch_metadata(Some(&topic), KAFKA_CALL_TIMEOUT)
            .map_err(|source| KafkaGlueError::Metadata {
                topic: topic.clone(),
                source,
            })?;
        let mut out = BTreeMap::new();
        if let Some(t) = md.topics().first() {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p.id(), KAFKA_CALL_TIMEOUT)
                    .map_err(|source| KafkaGlueError::Read {
                        topic: topic.clone(),
                        source,
                    })?;
                out.insert(p.id(), high);
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| KafkaGlueError::Join(e.to_string()))?
}
