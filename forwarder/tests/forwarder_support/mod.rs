//! Shared helpers of the forwarder stage tests: realistic audit records on `m365.events`
//! (idempotent producer, `tag` header, key = Id), health records, and the comparison of
//! what the fake Devo received with what the topic holds.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use m365_common::envelope::EventHeaders;
use m365_common::kafka::KafkaSettings;
use m365_common::testkit;
use m365_sim::devo::FakeDevo;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub const TAGS: [&str; 3] = [
    "cloud.office365.management.exchange",
    "cloud.office365.management.sharepoint",
    "cloud.office365.management.azureactivedirectory",
];

/// Every this many events carries no `tag` header (fallback tag).
pub const UNTAGGED_EVERY: usize = 97;

/// A realistic audit record with id `Id`.
pub fn record(n: usize) -> (String, String) {
    let id = format!("{:08x}-4f2b-4c1e-9a7d-{:012x}", n as u32, n as u64 * 7919);
    let (workload, op) = match n % 3 {
        0 => ("Exchange", "MailItemsAccessed"),
        1 => ("SharePoint", "FileAccessed"),
        _ => ("AzureActiveDirectory", "UserLoggedIn"),
    };
    let json = format!(
        r#"{{"CreationTime":"2026-11-27T10:{:02}:{:02}","Id":"{id}","Operation":"{op}","OrganizationId":"9b1c4d2e-0f3a-4b5c-8d7e-6f5a4b3c2d1e","RecordType":{},"ResultStatus":"Succeeded","UserKey":"1003200{n:09}","UserType":0,"Version":1,"Workload":"{workload}","ClientIP":"203.0.113.{}","ObjectId":"https://contoso.sharepoint.com/sites/finance/Shared Documents/report-{n}.xlsx","UserId":"user{}@contoso.onmicrosoft.com","AppAccessContext":{{"AADSessionId":"0a1b2c3d-{n:08}","IssuedAtTime":"2026-11-27T09:58:00"}}}}"#,
        (n / 60) % 60,
        n % 60,
        [50, 6, 15][n % 3],
        n % 250,
        n % 500,
    );
    (id, json)
}

/// The tag header of event `n`, `None` for the untagged ones.
pub fn tag_of(n: usize) -> Option<&'static str> {
    (n % UNTAGGED_EVERY != UNTAGGED_EVERY - 1).then(|| TAGS[n % 3])
}

/// Produces `events` audit records to `{prefix}.events` and `health` status records to
/// `{prefix}.health`; returns the event ids.
pub async fn populate(settings: &KafkaSettings, events: usize, health: usize) -> Vec<String> {
    let producer: FutureProducer = settings.producer_config().create().expect("producer");
    let topics = settings.topics();
    let ids = produce_events(&producer, &topics.events, 0..events).await;
    for n in 0..health {
        let json = format!(
            r#"{{"collector_name":"m365-devo","input_name":"office365","service_name":"consumer","level":"info","msg":"heartbeat","job_id":"job-{n}","counters":{{"records_out":{n}}}}}"#
        );
        producer
            .send(
                FutureRecord::to(&topics.health)
                    .key("consumer")
                    .payload(json.as_bytes()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("health record acknowledged");
    }
    ids
}

/// Produces audit records number `range` to `topic` (tag header, key = Id); returns their
/// ids once every one is acknowledged.
pub async fn produce_events(
    producer: &FutureProducer,
    topic: &str,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(range.len());
    for chunk in range.collect::<Vec<_>>().chunks(2000) {
        let mut sends = Vec::new();
        for &n in chunk {
            let (id, json) = record(n);
            let mut headers = OwnedHeaders::new();
            if let Some(tag) = tag_of(n) {
                headers = headers.insert(Header {
                    key: EventHeaders::TAG,
                    value: Some(tag),
                });
            }
            headers = headers.insert(Header {
                key: EventHeaders::TENANT_ID,
                value: Some("9b1c4d2e-0f3a-4b5c-8d7e-6f5a4b3c2d1e"),
            });
            let p = producer.clone();
            sends.push(async move {
                p.send(
                    FutureRecord::to(topic)
                        .key(id.as_bytes())
                        .payload(json.as_bytes())
                        .headers(headers),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| id)
            });
        }
        for r in futures::future::join_all(sends).await {
            ids.push(r.map_err(|(e, _)| e).expect("event acknowledged"));
        }
    }
    ids
}

/// What the fake Devo received, by record Id.
#[derive(Debug, Default)]
pub struct Received {
    /// Times each Id arrived (complete lines only).
    pub ids: HashMap<String, u32>,
    /// Lines per tag.
    pub per_tag: BTreeMap<String, u64>,
    /// Lines whose message is not a JSON record with an Id (health records, cut lines).
    pub without_id: u64,
}

impl Received {
    pub fn duplicates(&self) -> u64 {
        self.ids
            .values()
            .map(|&c| u64::from(c.saturating_sub(1)))
            .sum()
    }

    pub fn missing<'a>(&self, expected: &'a [String]) -> Vec<&'a String> {
        expected
            .iter()
            .filter(|id| !self.ids.contains_key(*id))
            .collect()
    }
}

pub fn received(devo: &FakeDevo) -> Received {
    let mut r = Received::default();
    for line in devo.received() {
        *r.per_tag.entry(line.tag.to_string()).or_default() += 1;
        let id = serde_json::from_slice::<serde_json::Value>(&line.message)
            .ok()
            .and_then(|v| v.get("Id").and_then(|i| i.as_str()).map(str::to_owned));
        match id {
            Some(id) => *r.ids.entry(id).or_default() += 1,
            None => r.without_id += 1,
        }
    }
    r
}

/// The group's committed offset per `(topic, partition)` of the two forwarded topics.
pub fn committed(settings: &KafkaSettings, group: &str) -> BTreeMap<(String, i32), i64> {
    let topics = settings.topics();
    testkit::committed_offsets(settings, group, &[&topics.events, &topics.health])
}

/// End offset per `(topic, partition)` of the two forwarded topics, non-empty partitions only.
pub fn end_offsets(settings: &KafkaSettings) -> BTreeMap<(String, i32), i64> {
    let topics = settings.topics();
    let mut ends = testkit::end_offsets(settings, &[&topics.events, &topics.health]);
    ends.retain(|_, high| *high > 0);
    ends
}

/// Id of every event by `(partition, offset)`.
pub async fn event_positions(settings: &KafkaSettings) -> HashMap<(i32, i64), String> {
    let map = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let sink = map.clone();
    m365_common::kafka::scan_topic(
        settings,
        &settings.topics().events,
        HashMap::new(),
        move |r| {
            let key = String::from_utf8(r.key.unwrap_or_default()).unwrap_or_default();
            sink.lock().unwrap().insert((r.partition, r.offset), key);
        },
    )
    .await
    .expect("scan");
    map.lock().unwrap().clone()
}
