//! When records are missing at Devo: where they stopped. For each blob with missing records,
//! read the topics to see how far it got — never listed (producer), listed but its records
//! not on `<prefix>.events` (consumer), on `<prefix>.events` but not at Devo (forwarder) —
//! and whether it was dead-lettered. [`group_lag_lines`] adds, per consumer group, how many
//! records sit in Kafka beyond its committed offsets: "not yet handled" rather than dropped.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use m365_common::envelope::UriMessage;
use m365_common::kafka::Topics;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::report::Report;
use crate::watchdog::{GroupWatch, Silent, blocking};

/// Where one blob's records stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDiagnosis {
    /// Content id.
    pub content_id: String,
    /// Records of it lost.
    pub lost: u64,
    /// Times its URI is on `<prefix>.uris`.
    pub on_uris: u64,
    /// Times it is on `<prefix>.uris.retry`.
    pub on_retry: u64,
    /// Times it is on `<prefix>.uris.dead`.
    pub on_dead: u64,
    /// Lost records of it found on `<prefix>.events`.
    pub lost_on_events: u64,
    /// The stage that lost them.
    pub verdict: &'static str,
}

/// Longest a diagnosis scan of one topic may take.
const SCAN_LIMIT: Duration = Duration::from_secs(120);

/// Reads every record of `topic` (`read_uncommitted`: tansu 0.6 has no transactions and
/// reports the last stable offset late, so `read_committed` could wait for ever at the tail)
/// from the low to the high watermark as they are now, handing (key, payload) to `f`.
fn scan(
    bootstrap: &str,
    topic: &str,
    mut f: impl FnMut(Option<&[u8]>, Option<&[u8]>),
) -> Result<(), String> {
    let err = |what: &str, e: KafkaError| format!("{what} {topic}: {e}");
    let client: BaseConsumer<Silent> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "m365-chaos-diagnose")
        .set("group.id", "m365-chaos-diagnose")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .set_log_level(RDKafkaLogLevel::Emerg)
        .create_with_context(Silent)
        .map_err(|e| err("client for", e))?;
    let call = Duration::from_secs(30);
    let md = client
        .fetch_metadata(Some(topic), call)
        .map_err(|e| err("metadata of", e))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for p in md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
    {
        let (low, high) = client
            .fetch_watermarks(topic, p, call)
            .map_err(|e| err("watermarks of", e))?;
        if low < high {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(|e| err("assigning", e))?;
            ends.insert(p, high);
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    client.assign(&tpl).map_err(|e| err("assigning", e))?;
    let deadline = Instant::now() + SCAN_LIMIT;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(format!(
                "reading {topic}: partitions {:?} not read to their end within {SCAN_LIMIT:?}",
                ends.keys().collect::<Vec<_>>()
            ));
        }
        match client.poll(Duration::from_secs(1)) {
            None => {}
            Some(Err(e)) => return Err(err("reading", e)),
            Some(Ok(m)) => {
                f(m.key(), m.payload());
                if ends
                    .get(&m.partition())
                    .is_some_and(|&h| m.offset() + 1 >= h)
                {
                    ends.remove(&m.partition());
                }
            }
        }
    }
    Ok(())
}

async fn content_ids(bootstrap: &str, topic: &str) -> Result<HashMap<String, u64>, String> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut seen = HashMap::<String, u64>::new();
        scan(&bootstrap, &topic, |_, payload| {
            if let Some(m) = payload.and_then(|p| serde_json::from_slice::<UriMessage>(p).ok()) {
                *seen.entry(m.content_id).or_default() += 1;
            }
        })?;
        Ok(seen)
    })
    .await
    .map_err(|e| format!("scan task: {e}"))?
}

/// One line per consumer group of the pipeline: committed offsets against the high
/// watermarks of its topics, i.e. how many records sit in Kafka not yet handled.
pub async fn group_lag_lines(bootstrap: &str, prefix: &str) -> Vec<String> {
    let topics = Topics::new(prefix);
    let groups = [
        (format!("{prefix}-consumer"), vec![topics.uris.clone()]),
        (format!("{prefix}-uri-retry"), vec![topics.retry.clone()]),
        (
            format!("{prefix}-forwarder"),
            vec![topics.events.clone(), topics.health.clone()],
        ),
    ];
    let mut out = Vec::new();
    for (group, topics) in groups {
        let bootstrap = bootstrap.to_owned();
        let g = group.clone();
        let read = blocking(move || {
            let w = GroupWatch::new(&bootstrap, &g, &topics, Duration::from_secs(30))?;
            let lag = w.lag()?;
            let view = w.describe().ok();
            Ok((lag, view))
        })
        .await;
        out.push(match read {
            Ok((lag, view)) => format!(
                "group {group} ({}): {}",
                view.map(|v| format!("{} with {} member(s)", v.state, v.members.len()))
                    .unwrap_or_else(|| "not described".to_owned()),
                lag.topics
                    .iter()
                    .map(|(t, (done, high))| format!(
                        "{t} committed {done} of {high} ({} waiting)",
                        high - done
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => format!("group {group}: not read: {e}"),
        });
    }
    out
}

/// Where the duplicates at Devo came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DuplicateOrigins {
    /// Extra receptions explained by extra copies of the record on the events topic: the
    /// consumer (or the producer listing a blob twice past the consumer's dedup) wrote it
    /// more than once.
    pub upstream: u64,
    /// Extra receptions of records whose copies on the events topic were each delivered
    /// once already: the forwarder sent them again.
    pub forwarder: u64,
}

/// Splits the duplicates of `received` (record id → times at Devo) by origin: a record
/// received `n` times that is `k` times on the events topic counts `min(n, k) - 1` upstream
/// and the rest as re-sent by the forwarder.
pub fn split_duplicates(
    received: &HashMap<String, u32>,
    on_events: &HashMap<String, u32>,
) -> DuplicateOrigins {
    let mut o = DuplicateOrigins::default();
    for (id, &n) in received {
        if n < 2 {
            continue;
        }
        let k = on_events.get(id).copied().unwrap_or(1).max(1);
        let upstream = n.min(k) - 1;
        o.upstream += u64::from(upstream);
        o.forwarder += u64::from(n - 1 - upstream);
    }
    o
}

/// Reads the events topic and splits the duplicates of `received` by origin
/// ([`split_duplicates`]).
pub async fn duplicate_origins(
    bootstrap: &str,
    prefix: &str,
    received: &HashMap<String, u32>,
) -> Result<DuplicateOrigins, String> {
    let wanted: HashSet<String> = received
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    if wanted.is_empty() {
        return Ok(DuplicateOrigins::default());
    }
    let on_events = key_counts(bootstrap, &Topics::new(prefix).events, wanted).await?;
    Ok(split_duplicates(received, &on_events))
}

/// How many times each key of `wanted` is on `topic` (keys never seen are absent).
async fn key_counts(
    bootstrap: &str,
    topic: &str,
    wanted: HashSet<String>,
) -> Result<HashMap<String, u32>, String> {
    let (b, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut count = HashMap::<String, u32>::new();
        scan(&b, &topic, |key, _| {
            if let Some(k) = key.and_then(|k| std::str::from_utf8(k).ok())
                && wanted.contains(k)
            {
                *count.entry(k.to_owned()).or_default() += 1;
            }
        })?;
        Ok(count)
    })
    .await
    .map_err(|e| format!("scan task: {e}"))?
}

/// Diagnoses the lost records of `report` from the topics of the broker at `bootstrap`.
pub async fn diagnose(
    bootstrap: &str,
    prefix: &str,
    report: &Report,
) -> Result<Vec<BlobDiagnosis>, String> {
    let lost_ids_by_blob = &report.lost_ids_by_blob;
    let topics = Topics::new(prefix);
    let uris = content_ids(bootstrap, &topics.uris).await?;
    let retry = content_ids(bootstrap, &topics.retry).await?;
    let dead = content_ids(bootstrap, &topics.dead).await?;
    let wanted: HashSet<String> = lost_ids_by_blob.values().flatten().cloned().collect();
    let found = key_counts(bootstrap, &topics.events, wanted).await?;
    let mut out = Vec::new();
    for (blob, (_, lost)) in &report.lost_blobs {
        let ids = lost_ids_by_blob.get(blob).cloned().unwrap_or_default();
        let lost_on_events = ids.iter().filter(|id| found.contains_key(*id)).count() as u64;
        let on_uris = uris.get(blob).copied().unwrap_or(0);
        let on_retry = retry.get(blob).copied().unwrap_or(0);
        let on_dead = dead.get(blob).copied().unwrap_or(0);
        let verdict = if lost_on_events == *lost {
            "forwarder: on the events topic, not at Devo"
        } else if on_uris == 0 && on_retry == 0 {
            "producer: never listed to the uris topic"
        } else if on_dead > 0 {
            "consumer: dead-lettered"
        } else if lost_on_events == 0 {
            "consumer: listed, its records not on the events topic"
        } else {
            "consumer: only part of the blob's records on the events topic"
        };
        out.push(BlobDiagnosis {
            content_id: blob.clone(),
            lost: *lost,
            on_uris,
            on_retry,
            on_dead,
            lost_on_events,
            verdict,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves duplicates are split by whether the events topic holds the extra copies.
    #[test]
    fn duplicates_split_by_copies_on_the_topic() {
        let received: HashMap<String, u32> = [("a", 1), ("b", 2), ("c", 3), ("d", 2), ("e", 4)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        // a: once, fine. b: twice at Devo, once on the topic: forwarder. c: three times, twice
        // on the topic: one upstream, one forwarder. d: twice, twice on the topic: upstream.
        // e: four times, not found on the topic (compacted away, say): counted as once.
        let on_events: HashMap<String, u32> = [("a", 1), ("b", 1), ("c", 2), ("d", 2)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let o = split_duplicates(&received, &on_events);
        assert_eq!(
            o,
            DuplicateOrigins {
                upstream: 2,
                forwarder: 5
            }
        );
    }
}
