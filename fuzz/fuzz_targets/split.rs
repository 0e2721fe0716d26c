//! Fuzz target `split`: the consumer's streaming blob splitter on arbitrary bytes, fed in an
//! arbitrary chunking.
//!
//! Input: byte 0 picks the chunking (0 = one chunk; otherwise a cycle of small chunk sizes
//! derived from it), byte 1 picks the record size cap (0 = default, else a small cap so the
//! `TooLarge` path is reached), the rest is the body. Invariants checked:
//! * no panic;
//! * every record's bytes are exactly `body[offset..offset + len]`, valid UTF-8, and parse as a
//!   JSON object whose `Id` is the reported id (a string, or an integer kept as its digits);
//! * records never exceed the cap, and the splitter's buffer never exceeds it either;
//! * the items and the summary (bar the buffer high-water mark) do not depend on the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m365_consumer::split::{SplitItem, SplitLimits, Splitter, Summary};

fn run(
    body: &[u8],
    limits: SplitLimits,
    sizes: &[usize],
) -> (Vec<SplitItem>, Result<Summary, String>) {
    let mut splitter = Splitter::new(limits);
    let mut items = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < body.len() {
        let n = sizes[k % sizes.len()].min(body.len() - pos);
        splitter.feed_into(&body[pos..pos + n], &mut items);
        // Documented bound: the partial-element buffer never outgrows the record cap (elements
        // that may be scalars are checked on up to 128 bytes, whatever the cap).
        assert!(splitter.high_water_bytes() <= limits.max_record_bytes.max(128));
        pos += n;
        k += 1;
    }
    let summary = splitter.finish().map_err(|e| {
        // The error renders, and names the terminal reason.
        let text = e.to_string();
        assert!(text.contains(e.rejection.reason.as_str()));
        format!(
            "{:?}/{}/{}",
            e.rejection.reason, e.rejection.offset, e.summary.records
        )
    });
    (items, summary)
}

/// The value of the first top-level `Id` key of an object (later ones are only syntax-checked:
/// the splitter ignores them, and they may hold numbers `Value` cannot represent).
struct TopLevelIds(Vec<serde_json::Value>);

impl<'de> serde::Deserialize<'de> for TopLevelIds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopLevelIds;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevelIds, A::Error> {
                let mut ids = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "Id" && ids.is_empty() {
                        ids.push(map.next_value::<serde_json::Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(TopLevelIds(ids))
            }
        }
        d.deserialize_map(V)
    }
}

/// Items without the parser's free-text `detail`, which may word a problem differently
/// depending on how much of the element it saw at once.
fn comparable(items: &[SplitItem]) -> Vec<SplitItem> {
    items
        .iter()
        .cloned()
        .map(|item| match item {
            SplitItem::Rejected(mut r) => {
                r.detail = None;
                SplitItem::Rejected(r)
            }
            record => record,
        })
        .collect()
}

fn check_record(body: &[u8], limits: SplitLimits, item: &SplitItem) {
    let SplitItem::Record(rec) = item else { return };
    let start = usize::try_from(rec.offset).expect("offset fits");
    let end = start + rec.bytes.len();
    assert!(end <= body.len(), "record runs past the body");
    assert_eq!(
        &body[start..end],
        &rec.bytes[..],
        "record bytes are not the body's"
    );
    assert!(
        rec.bytes.len() <= limits.max_record_bytes,
        "record over the cap"
    );
    assert!(
        std::str::from_utf8(&rec.bytes).is_ok(),
        "record is not UTF-8"
    );
    // Valid JSON syntax (numbers are not range-checked: `1e999` is valid JSON text, which
    // serde_json's `Value` would refuse as out of range).
    serde_json::from_slice::<serde::de::IgnoredAny>(&rec.bytes).expect("a record is valid JSON");
    // An object (the visitor takes maps only); the first of duplicated keys wins, as the
    // splitter documents.
    let ids: TopLevelIds = serde_json::from_slice(&rec.bytes).expect("a record is a JSON object");
    let id = match ids.0.first().expect("a record has an Id") {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => panic!("Id of unexpected type: {other:?}"),
    };
    assert_eq!(id, rec.id, "reported Id differs from the record's");
    assert!(!rec.id.is_empty(), "empty Id yielded");
    // Lenient time parsing never panics.
    let _ = rec.creation_time_utc();
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (mode, cap, body) = (data[0], data[1], &data[2..]);
    let limits = SplitLimits {
        max_record_bytes: if cap == 0 {
            SplitLimits::default().max_record_bytes
        } else {
            usize::from(cap) * 4
        },
        excerpt_bytes: 16,
    };
    let sizes: Vec<usize> = if mode == 0 {
        vec![body.len().max(1)]
    } else {
        (1..=4usize)
            .map(|i| 1 + (usize::from(mode) * i * 37) % 97)
            .collect()
    };

    let (items, summary) = run(body, limits, &sizes);
    for item in &items {
        check_record(body, limits, item);
        if let SplitItem::Rejected(r) = item {
            assert!(r.excerpt.len() <= limits.excerpt_bytes);
            let _ = format!("{r:?}");
        }
    }
    // Same result when fed whole and byte by byte (parser messages aside).
    let (whole_items, whole_summary) = run(body, limits, &[body.len().max(1)]);
    assert_eq!(
        comparable(&items),
        comparable(&whole_items),
        "items depend on the chunking"
    );
    let strip = |s: Result<Summary, String>| {
        s.map(|s| Summary {
            high_water_bytes: 0,
            ..s
        })
    };
    assert_eq!(
        strip(summary.clone()),
        strip(whole_summary),
        "summary depends on the chunking"
    );
    if body.len() <= 512 {
        let (byte_items, byte_summary) = run(body, limits, &[1]);
        assert_eq!(
            comparable(&items),
            comparable(&byte_items),
            "items differ when fed byte by byte"
        );
        assert_eq!(strip(summary), strip(byte_summary));
    }
});
