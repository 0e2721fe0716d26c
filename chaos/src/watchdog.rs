//! What the supervisor watches besides exits: whether the broker still answers, and whether
//! each stage's consumer groups still make progress.
//!
//! - [`probe_broker`] sends one Kafka `Metadata` request on a fresh connection (no client
//!   library state, no reconnect backoff) and waits a bounded time for the answer. tansu
//!   serves every storage operation of its sqlite engine from one task, so a broker whose
//!   storage is stuck stops answering this request too.
//! - [`GroupWatch`] reads a group's committed offsets and the high watermarks of its topics
//!   (`read_uncommitted`: tansu has no transactions) with a Kafka client of its own that
//!   never joins the group. A stage whose groups have records waiting and whose committed
//!   offsets do not move is stalled; [`GroupWatch::describe`] says how the broker sees the
//!   group (state and member count), for the report.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Errors of the broker probe and the group reads.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// No answer within the time allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not the one asked for.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The Kafka client failed.
    #[error("{what}: {source}")]
    Kafka {
        /// The operation.
        what: String,
        /// Cause.
        source: KafkaError,
    },
    /// The blocking task failed.
    #[error("watch task: {0}")]
    Join(String),
}

/// Kafka API key of `Metadata`.
const METADATA_API_KEY: i16 = 3;
/// Version 1: the first with a null topic array meaning "every topic".
const METADATA_VERSION: i16 = 1;
/// Largest answer the probe accepts (a metadata answer of a handful of topics is small).
const MAX_ANSWER: i32 = 16 << 20;

/// Asks the broker at `addr` for the metadata of every topic on a new connection and returns
/// how long the answer took, or why there was none within `timeout`.
pub async fn probe_broker(addr: &str, timeout: Duration) -> Result<Duration, WatchError> {
    let started = std::time::Instant::now();
    match tokio::time::timeout(timeout, metadata_round_trip(addr)).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(WatchError::Timeout(timeout)),
    }
}

async fn metadata_round_trip(addr: &str) -> Result<(), WatchError> {
    const CORRELATION: i32 = 0x4d36_3530;
    let client_id = b"m365-chaos-probe";
    let mut body = Vec::with_capacity(32);
    body.extend_from_slice(&METADATA_API_KEY.to_be_bytes());
    body.extend_from_slice(&METADATA_VERSION.to_be_bytes());
    body.extend_from_slice(&CORRELATION.to_be_bytes());
    // Both lengths are small constants, well within i16 / i32.
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    body.extend_from_slice(&(-1i32).to_be_bytes());
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(&body);

    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&frame).await?;
    let size = stream.read_i32().await?;
    if !(4..=MAX_ANSWER).contains(&size) {
        return Err(WatchError::Protocol(format!("answer of {size} bytes")));
    }
    let correlation = stream.read_i32().await?;
    if correlation != CORRELATION {
        return Err(WatchError::Protocol(format!(
            "correlation id {correlation:#x}, asked {CORRELATION:#x}"
        )));
    }
    // Read (and drop) the rest, so the broker finished writing it.
    let mut rest = vec![0u8; (size - 4) as usize];
    stream.read_exact(&mut rest).await?;
    Ok(())
}

/// A Kafka client context that keeps quiet: the broker is killed on purpose all run long.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl ClientContext for Silent {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _log_message: &str) {}
    fn error(&self, _error: KafkaError, _reason: &str) {}
}

impl ConsumerContext for Silent {}

/// Records waiting in a group's topics and its progress, read once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupLag {
    /// Sum over the partitions of the committed offsets (the low watermark where the group
    /// committed nothing yet): it only grows while the group makes progress.
    pub committed: i64,
    /// Sum over the partitions of the high watermarks.
    pub high: i64,
    /// Per topic: (committed, high).
    pub topics: BTreeMap<String, (i64, i64)>,
}

impl GroupLag {
    /// Records written but not yet committed by the group.
    pub fn lag(&self) -> i64 {
        (self.high - self.committed).max(0)
    }
}

/// How the broker describes a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// State as the broker names it (`Stable`, `PreparingRebalance`, ...).
    pub state: String,
    /// Its members' ids.
    pub members: Vec<String>,
}

/// Watches one consumer group (with a client that never joins it).
pub struct GroupWatch {
    group: String,
    topics: Vec<String>,
    client: BaseConsumer<Silent>,
    timeout: Duration,
}

impl std::fmt::Debug for GroupWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWatch")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl GroupWatch {
    /// A watch of `group` reading `topics` on the broker at `bootstrap`; each broker call
    /// waits at most `timeout`.
    pub fn new(
        bootstrap: &str,
        group: &str,
        topics: &[String],
        timeout: Duration,
    ) -> Result<GroupWatch, WatchError> {
        let client: BaseConsumer<Silent> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("client.id", "m365-chaos-watch")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_uncommitted")
            .set("reconnect.backoff.max.ms", "1000")
            .set_log_level(RDKafkaLogLevel::Emerg)
            .create_with_context(Silent)
            .map_err(|source| WatchError::Kafka {
                what: format!("creating the watch client of {group}"),
                source,
            })?;
        Ok(GroupWatch {
            group: group.to_owned(),
            topics: topics.to_vec(),
            client,
            timeout,
        })
    }

    /// The group id.
    pub fn group(&self) -> &str {
        &self.group
    }

    fn kafka(&self, what: &str) -> impl Fn(KafkaError) -> WatchError {
        let what = format!("{what} ({})", self.group);
        move |source| WatchError::Kafka {
            what: what.clone(),
            source,
        }
    }

    /// Committed offsets and high watermarks of the group's topics (blocking).
    pub fn lag(&self) -> Result<GroupLag, WatchError> {
        let mut tpl = TopicPartitionList::new();
        let mut lows = BTreeMap::new();
        let mut out = GroupLag::default();
        for topic in &self.topics {
            let md = self
                .client
                .fetch_metadata(Some(topic), self.timeout)
                .map_err(self.kafka("metadata"))?;
            let partitions: Vec<i32> = md
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            for p in partitions {
                let (low, high) = self
                    .client
                    .fetch_watermarks(topic, p, self.timeout)
                    .map_err(self.kafka("watermarks"))?;
                lows.insert((topic.clone(), p), low);
                out.high += high;
                out.topics.entry(topic.clone()).or_default().1 += high;
                tpl.add_partition(topic, p);
            }
        }
        if tpl.count() == 0 {
            return Ok(out);
        }
        let committed = self
            .client
            .committed_offsets(tpl, self.timeout)
            .map_err(self.kafka("committed offsets"))?;
        for e in committed.elements() {
            let low = lows
                .get(&(e.topic().to_owned(), e.partition()))
                .copied()
                .unwrap_or(0);
            let at = match e.offset() {
                Offset::Offset(o) => o.max(low),
                _ => low,
            };
            out.committed += at;
            out.topics.entry(e.topic().to_owned()).or_default().0 += at;
        }
        Ok(out)
    }

    /// The group as the broker describes it (blocking).
    pub fn describe(&self) -> Result<GroupView, WatchError> {
        let list = self
            .client
            .fetch_group_list(Some(&self.group), self.timeout)
            .map_err(self.kafka("describe group"))?;
        let Some(g) = list.groups().iter().find(|g| g.name() == self.group) else {
            return Err(WatchError::Protocol(format!(
                "the broker did not describe {}",
                self.group
            )));
        };
        Ok(GroupView {
            state: g.state().to_owned(),
            members: g.members().iter().map(|m| m.id().to_owned()).collect(),
        })
    }
}

/// Runs a blocking watch call on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WatchError> + Send + 'static,
) -> Result<T, WatchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WatchError::Join(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the probe sends a well-formed Metadata v1 request and accepts an answer that
    // carries the same correlation id.
    #[tokio::test]
    async fn probe_round_trip_with_a_fake_broker() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let size = s.read_i32().await.unwrap();
            let mut req = vec![0u8; size as usize];
            s.read_exact(&mut req).await.unwrap();
            let api_key = i16::from_be_bytes([req[0], req[1]]);
            let version = i16::from_be_bytes([req[2], req[3]]);
            let correlation = [req[4], req[5], req[6], req[7]];
            let mut answer = Vec::new();
            answer.extend_from_slice(&8i32.to_be_bytes());
            answer.extend_from_slice(&correlation);
            answer.extend_from_slice(&[0, 0, 0, 0]);
            s.write_all(&answer).await.unwrap();
            (api_key, version)
        });
        let took = probe_broker(&addr, Duration::from_secs(10)).await;
        assert!(took.is_ok(), "{took:?}");
        assert_eq!(server.await.unwrap(), (3, 1));
    }

    // Proves a broker that accepts the connection but never answers is reported as a
    // timeout, not waited for.
    #[tokio::test]
    async fn probe_times_out_on_a_silent_broker() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let _keep = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let r = probe_broker(&addr, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(WatchError::Timeout(_))), "{r:?}");
    }
}
