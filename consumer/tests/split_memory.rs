//! The splitter's own memory does not grow with the blob: a large generated body fed in
//! 64 KiB chunks, with records that span many chunks and records over the cap, never makes
//! its partial-element buffer exceed the record cap (the issue's bound is cap + chunk size).

use m365_consumer::split::{RejectReason, SplitItem, SplitLimits, Splitter};

const CHUNK: usize = 64 * 1024;
const CAP: usize = 1024 * 1024;

/// Generates a blob of about `total` bytes on the fly and feeds it in `CHUNK`-byte chunks;
/// returns (records expected, oversized expected, records seen, oversized seen, high water).
fn stream_blob(total: usize) -> (u64, u64, u64, u64, usize) {
    let mut splitter = Splitter::new(SplitLimits {
        max_record_bytes: CAP,
        ..SplitLimits::default()
    });
    let mut pending: Vec<u8> = b"[".to_vec();
    let mut items = Vec::new();
    let (mut want_records, mut want_big, mut got_records, mut got_big) = (0u64, 0u64, 0u64, 0u64);
    let mut written = 0usize;
    let mut i = 0u64;
    let mut drain = |pending: &mut Vec<u8>, all: bool, items: &mut Vec<SplitItem>| {
        let mut at = 0;
        while pending.len() - at >= CHUNK || (all && at < pending.len()) {
            let end = (at + CHUNK).min(pending.len());
            splitter.feed_into(&pending[at..end], items);
            at = end;
            for item in items.drain(..) {
                match item {
                    SplitItem::Record(_) => got_records += 1,
                    SplitItem::Rejected(r) if r.reason == RejectReason::TooLarge => got_big += 1,
                    SplitItem::Rejected(r) => panic!("unexpected {r:?}"),
                }
            }
        }
        pending.drain(..at);
    };
    while written < total {
        if i > 0 {
            pending.push(b',');
        }
        let pad = match i % 5000 {
            1234 => {
                want_big += 1;
                3 * CAP
            }
            777 => 300 * 1024,
            _ => (i as usize * 37) % 700,
        };
        if pad <= CAP - 200 {
            want_records += 1;
        }
        let rec = format!(
            r#"{{"CreationTime":"2024-05-01T10:11:12","Id":"id-{i:012}","RecordType":50,"Workload":"Exchange","Subject":"Grüße \"q\" 日本","Pad":"{}"}}"#,
            "x".repeat(pad)
        );
        written += rec.len() + 1;
        pending.extend_from_slice(rec.as_bytes());
        drain(&mut pending, false, &mut items);
        i += 1;
    }
    pending.extend_from_slice(b"]\n");
    drain(&mut pending, true, &mut items);
    let summary = splitter.finish().expect("complete");
    assert_eq!(summary.records, got_records);
    (
        want_records,
        want_big,
        got_records,
        got_big,
        summary.high_water_bytes,
    )
}

fn check(total: usize) {
    let (want_records, want_big, got_records, got_big, high_water) = stream_blob(total);
    assert!(want_big > 0 && want_records > 1000);
    assert_eq!(got_records, want_records);
    assert_eq!(got_big, want_big);
    // Stricter than the issue's bound (cap + chunk size): the buffer never passes the cap.
    assert!(
        high_water <= CAP,
        "high water {high_water} over the cap {CAP} (chunk {CHUNK})"
    );
    // Records of 300 KiB span several chunks, so the buffer was really used.
    assert!(high_water >= 300 * 1024, "high water {high_water}");
}

// Proves a 20 MB body with spanning and oversized records keeps the buffer within the cap.
#[test]
fn twenty_megabytes_stay_within_the_cap() {
    check(20 << 20);
}

// Proves the same for a 300 MB body (the issue's size); slow in debug builds.
#[test]
#[ignore = "pushes 300 MB through the splitter; run with --ignored (release recommended)"]
fn three_hundred_megabytes_stay_within_the_cap() {
    check(300 << 20);
}
