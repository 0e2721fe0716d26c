//! The splitter on real public audit records (`shared/samples/`): every record comes out as
//! its exact original bytes with the four fields read right.

use m365_consumer::split::{RawRecord, RejectReason, SplitItem, SplitLimits, Splitter};
use serde::Deserialize;
use serde_json::value::RawValue;

fn sample(name: &str) -> String {
    let path = format!("{}/../../shared/samples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The `event` objects of the Panther file, as their exact original text.
fn panther_events() -> Vec<String> {
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        event: &'a RawValue,
    }
    let text = sample("panther-labeled-tests.jsonl");
    text.lines()
        .map(|l| {
            serde_json::from_str::<Line>(l)
                .unwrap()
                .event
                .get()
                .to_owned()
        })
        .collect()
}

fn split_whole(body: &[u8]) -> Vec<SplitItem> {
    let mut splitter = Splitter::new(SplitLimits::default());
    let items = splitter.feed(body);
    splitter.finish().expect("complete array");
    items
}

fn records(items: &[SplitItem]) -> Vec<&RawRecord> {
    items
        .iter()
        .filter_map(|i| match i {
            SplitItem::Record(r) => Some(r),
            SplitItem::Rejected(_) => None,
        })
        .collect()
}

// Proves the three records of Microsoft's documented sample response come out byte for byte,
// with Id, Workload, CreationTime and RecordType read, whatever whitespace separates them.
#[test]
fn microsoft_docs_sample_blob_round_trips_exact_bytes() {
    let lines: Vec<String> = sample("microsoft-docs-sample-response.jsonl")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3);
    let body = format!(
        "\u{feff}\r\n [ {} ,\n\t{},{}\n]\n",
        lines[0], lines[1], lines[2]
    );
    let items = split_whole(body.as_bytes());
    let recs = records(&items);
    assert_eq!(recs.len(), 3);
    for (rec, line) in recs.iter().zip(&lines) {
        assert_eq!(&rec.bytes[..], line.as_bytes());
        assert_eq!(
            &body.as_bytes()[rec.offset as usize..][..line.len()],
            line.as_bytes()
        );
    }
    assert_eq!(recs[0].id, "80c76bd2-9d81-4c57-a97a-accfc3443dca");
    assert_eq!(recs[0].workload.as_deref(), Some("AzureActiveDirectory"));
    assert_eq!(
        recs[0].creation_time.as_deref(),
        Some("2015-06-29T20:03:19")
    );
    assert_eq!(recs[0].record_type, Some(9));
    assert_eq!(recs[2].id, "b567caf0-088e-4c1c-a4ea-633a1e3d66c8");
    assert_eq!(recs[2].record_type, Some(8));
    assert_eq!(recs[2].index, 2);
    let t = recs[1].creation_time_utc().unwrap();
    assert_eq!(t.to_rfc3339(), "2015-06-29T20:03:34+00:00");
}

// Proves the Panther events (real shapes, some without Id or Workload, times with a space)
// are split exactly: records with an Id keep their bytes, those without are MissingId.
#[test]
fn panther_events_blob_keeps_bytes_and_reports_missing_ids() {
    let events = panther_events();
    assert_eq!(events.len(), 19);
    let body = format!("[{}]", events.join(","));
    let items = split_whole(body.as_bytes());
    assert_eq!(items.len(), events.len());
    let mut with_id = 0;
    for (item, event) in items.iter().zip(&events) {
        let value: serde_json::Value = serde_json::from_str(event).unwrap();
        match (item, value.get("Id").and_then(|v| v.as_str())) {
            (SplitItem::Record(rec), Some(id)) => {
                with_id += 1;
                assert_eq!(&rec.bytes[..], event.as_bytes());
                assert_eq!(rec.id, id);
                assert_eq!(
                    rec.workload.as_deref(),
                    value.get("Workload").and_then(|v| v.as_str())
                );
                assert_eq!(
                    rec.creation_time.as_deref(),
                    value.get("CreationTime").and_then(|v| v.as_str())
                );
                assert_eq!(
                    rec.record_type,
                    value.get("RecordType").and_then(|v| v.as_i64())
                );
                assert!(rec.creation_time_utc().is_some(), "{:?}", rec.creation_time);
            }
            (SplitItem::Rejected(rej), None) => {
                assert_eq!(rej.reason, RejectReason::MissingId);
                assert_eq!(rej.len as usize, event.len());
            }
            (item, id) => panic!("unexpected {item:?} for Id {id:?}"),
        }
    }
    assert_eq!(with_id, 9);
}

// Proves RecordType is read from a string too, an integer Id is accepted, escaped keys are
// matched, and the first of duplicated keys wins.
#[test]
fn lenient_field_shapes_are_read() {
    let body = br#"[{"RecordType":"15","Id":12345,"Work\u006coad":"Exchange"},
        {"Id":"a","Id":"b","RecordType":1.5,"Workload":null,"CreationTime":"2024-05-01 10:11:12.5Z"}]"#;
    let items = split_whole(body);
    let recs = records(&items);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].record_type, Some(15));
    assert_eq!(recs[0].id, "12345");
    assert_eq!(recs[0].workload.as_deref(), Some("Exchange"));
    assert_eq!(recs[1].id, "a");
    assert_eq!(recs[1].record_type, None);
    assert_eq!(recs[1].workload, None);
    assert_eq!(
        recs[1].creation_time_utc().unwrap().to_rfc3339(),
        "2024-05-01T10:11:12.500+00:00"
    );
}

// Proves non-ASCII text (accents, CJK, emoji, escapes) is kept byte for byte.
#[test]
fn non_ascii_text_is_kept_byte_for_byte() {
    let rec = r#"{"Id":"ü-1","Workload":"Exchange","Subject":"Grüße 日本語 🎉 \"q\" \\ \u00e9","Path":"C:\\dir"}"#;
    let body = format!("[{rec}]");
    let items = split_whole(body.as_bytes());
    let recs = records(&items);
    assert_eq!(recs.len(), 1);
    assert_eq!(&recs[0].bytes[..], rec.as_bytes());
    assert_eq!(recs[0].id, "ü-1");
}

// Proves an empty array is a complete, empty blob.
#[test]
fn empty_array_is_complete() {
    let mut splitter = Splitter::new(SplitLimits::default());
    assert!(splitter.feed(b" [ \n ] \n").is_empty());
    let summary = splitter.finish().unwrap();
    assert_eq!(summary.elements, 0);
    assert_eq!(summary.rejected.total(), 0);
}
