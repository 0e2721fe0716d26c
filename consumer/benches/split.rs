//! Throughput of the consumer's pure core, as ratios against a reference: the splitter versus
//! `serde_json::from_slice::<Vec<&RawValue>>` over the same blob (target ≥ 0.5×), and the
//! dedup filter's checks per second with the default sizing. Not a timed test: it prints.
//!
//! Run: `cargo bench -p m365-consumer --bench split` (optionally `-- <megabytes>`).

use std::hint::black_box;
use std::time::Instant;

use m365_consumer::dedup::{Dedup, DedupSettings};
use m365_consumer::split::{SplitItem, SplitLimits, Splitter};
use serde_json::value::RawValue;

/// A blob of about `target` bytes of realistic audit records (~0.5–2 KB each).
fn blob(target: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(target + 4096);
    body.push(b'[');
    let mut i = 0u64;
    while body.len() < target {
        if i > 0 {
            body.push(b',');
        }
        let extra = "ab\\\"c dé 日本 ".repeat((i % 40) as usize);
        body.extend_from_slice(
            format!(
                r#"{{"CreationTime":"2024-05-01T10:11:{:02}","Id":"{:08x}-1b2c-4d3e-8f40-{:012x}","Operation":"MailItemsAccessed","OrganizationId":"11111111-2222-3333-4444-555555555555","RecordType":50,"ResultStatus":"Succeeded","UserKey":"10032000ABCDEF01","UserType":0,"Version":1,"Workload":"Exchange","ClientIP":"203.0.113.7","UserId":"user{}@contoso.com","ExternalAccess":false,"OperationProperties":[{{"Name":"MailAccessType","Value":"Bind"}},{{"Name":"IsThrottled","Value":"False"}}],"OperationCount":2,"Folders":[{{"Id":"LgAAAAB{}","Path":"\\Inbox","FolderItems":[{{"InternetMessageId":"<ABC{}@mail.contoso.com>","Subject":"{}"}}]}}]}}"#,
                i % 60,
                i as u32,
                i,
                i % 997,
                i,
                i,
                extra
            )
            .as_bytes(),
        );
        i += 1;
    }
    body.push(b']');
    body
}

fn rate(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn main() {
    let mb: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let body = blob(mb << 20);
    println!("blob: {} bytes", body.len());

    let mut best_ref = f64::MAX;
    let mut best_split = f64::MAX;
    let mut records = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let v: Vec<&RawValue> = serde_json::from_slice(&body).expect("valid blob");
        records = v.len();
        black_box(&v);
        best_ref = best_ref.min(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut splitter = Splitter::new(SplitLimits::default());
        let mut items = Vec::new();
        let mut n = 0;
        for chunk in body.chunks(64 * 1024) {
            splitter.feed_into(chunk, &mut items);
            n += items
                .iter()
                .filter(|i| matches!(i, SplitItem::Record(_)))
                .count();
            black_box(&items);
            items.clear();
        }
        let summary = splitter.finish().expect("complete");
        assert_eq!(n, records);
        black_box(summary);
        best_split = best_split.min(t.elapsed().as_secs_f64());
    }
    println!(
        "serde_json Vec<&RawValue>: {:.0} MB/s; splitter (64 KiB chunks): {:.0} MB/s, {:.0} records/s; ratio {:.2}",
        rate(body.len(), best_ref),
        rate(body.len(), best_split),
        records as f64 / best_split,
        best_ref / best_split
    );

    let ids: Vec<String> = (0..2_000_000u64)
        .map(|i| format!("{:08x}-1b2c-4d3e-8f40-{i:012x}", i as u32))
        .collect();
    let mut dedup = Dedup::new(DedupSettings::default());
    let t = Instant::now();
    let fresh = ids.iter().filter(|id| dedup.check_and_insert(id)).count();
    let insert = t.elapsed().as_secs_f64();
    // The last million ids are within the horizon: every re-check is a duplicate.
    let recent = &ids[ids.len() - 1_000_000..];
    let t = Instant::now();
    let dupes = recent
        .iter()
        .filter(|id| !dedup.check_and_insert(id))
        .count();
    let recheck = t.elapsed().as_secs_f64();
    println!(
        "dedup (default plan, {} bytes): {:.0} fresh ids/s, {:.0} re-checks/s ({fresh} fresh, {dupes} duplicates)",
        dedup.memory_bytes(),
        ids.len() as f64 / insert,
        recent.len() as f64 / recheck,
    );
}
