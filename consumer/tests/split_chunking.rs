//! The splitter gives the same items and summary however the body is cut into chunks: at
//! every single split point, byte by byte, and in seeded random chunkings of a generated
//! 1000-record blob (cuts inside strings, escapes and multi-byte UTF-8 included).

use m365_consumer::split::{BlobIncomplete, SplitItem, SplitLimits, Splitter, Summary};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;

type Outcome = (Vec<SplitItem>, Result<Summary, BlobIncomplete>);

/// Feeds `body` cut at `cuts` (sorted offsets) and returns everything the splitter said,
/// with the high-water mark cleared (it legitimately depends on the chunking).
fn run(body: &[u8], cuts: &[usize], limits: SplitLimits) -> Outcome {
    let mut splitter = Splitter::new(limits);
    let mut items = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        splitter.feed_into(&body[at..cut], &mut items);
        at = cut;
    }
    let result = splitter
        .finish()
        .map(|s| Summary {
            high_water_bytes: 0,
            ..s
        })
        .map_err(|mut e| {
            e.summary.high_water_bytes = 0;
            e
        });
    (items, result)
}

/// A small blob with every kind of element and awkward bytes.
fn small_blob() -> Vec<u8> {
    let mut body = vec![0xEF, 0xBB, 0xBF];
    body.extend_from_slice(
        r#" [ {"Id":"a-1","Workload":"Exchange","RecordType":1,"Note":"esc \" \\ \/ \u00e9 end"},
{"Id":"b-2","CreationTime":"2024-05-01T10:11:12","Nested":{"x":[1,{"y":"]}"}],"z":"{["}},"str",
{"Workload":"NoId"},{"Id":"c-3","Text":"Grüße 日本 🎉"} junk , 42 , {"Id":"d-4","Bad":[}, {"Id":"e-5"},]"#
            .as_bytes(),
    );
    body
}

/// A generated record with escapes, nesting and non-ASCII text, `pad` extra bytes long.
fn record(i: usize, pad: usize) -> String {
    format!(
        r#"{{"CreationTime":"2024-05-01T10:{:02}:{:02}","Id":"{:08x}-0000-4000-8000-{:012x}","Operation":"MailItemsAccessed","RecordType":{},"Workload":"{}","UserId":"user{}@contoso.com","Subject":"Grüße \"quoted\" \\ back \u00e9 日本語 🎉","Folders":[{{"Path":"\\Inbox","Items":[{{"Id":"<{}@x>"}}]}}],"Pad":"{}"}}"#,
        (i / 60) % 60,
        i % 60,
        i,
        i * 7919,
        i % 300,
        ["Exchange", "SharePoint", "AzureActiveDirectory", "OneDrive"][i % 4],
        i,
        i,
        "x".repeat(pad)
    )
}

fn generated_blob(count: usize, rng: &mut StdRng) -> (Vec<u8>, Vec<String>) {
    let records: Vec<String> = (0..count)
        .map(|i| record(i, rng.random_range(0..400)))
        .collect();
    let mut body = String::from("[\n");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push_str([",", ",\n", " , ", ",\r\n  "][i % 4]);
        }
        body.push_str(r);
    }
    body.push_str("\n]");
    (body.into_bytes(), records)
}

// Proves cutting the small blob at any single point, or feeding it byte by byte, gives exactly
// the items and summary of feeding it whole.
#[test]
fn every_split_point_of_a_small_blob_gives_the_same_result() {
    let body = small_blob();
    let limits = SplitLimits::default();
    let whole = run(&body, &[], limits);
    assert_eq!(whole.0.len(), 9, "{:#?}", whole.0);
    assert!(whole.1.is_ok());
    for cut in 0..=body.len() {
        assert_eq!(run(&body, &[cut], limits), whole, "cut at {cut}");
    }
    let every: Vec<usize> = (1..body.len()).collect();
    assert_eq!(run(&body, &every, limits), whole, "byte by byte");
}

// Proves every pair of cut points in the small blob (two chunk boundaries, so an element can
// span three chunks) gives the same result, also with a cap small enough to reject records.
#[test]
fn every_pair_of_split_points_gives_the_same_result() {
    let body = small_blob();
    for limits in [
        SplitLimits::default(),
        SplitLimits {
            max_record_bytes: 60,
            excerpt_bytes: 7,
        },
    ] {
        let whole = run(&body, &[], limits);
        for a in (0..=body.len()).step_by(3) {
            for b in (a..=body.len()).step_by(5) {
                assert_eq!(run(&body, &[a, b], limits), whole, "cuts at {a}, {b}");
            }
        }
    }
}

// Proves a generated 1000-record blob comes out identical to serde_json's own split under
// random chunkings (chunk sizes 1..=3000 bytes, 25 seeds).
#[test]
fn random_chunkings_of_a_generated_blob_match_serde_json() {
    let mut rng = StdRng::seed_from_u64(0x6d33_3635);
    let (body, records) = generated_blob(1000, &mut rng);
    let reference: Vec<&RawValue> = serde_json::from_slice(&body).unwrap();
    assert_eq!(reference.len(), 1000);
    let limits = SplitLimits::default();
    let whole = run(&body, &[], limits);
    assert_eq!(whole.0.len(), 1000);
    for (item, (raw, text)) in whole.0.iter().zip(reference.iter().zip(&records)) {
        let SplitItem::Record(rec) = item else {
            panic!("rejected: {item:?}");
        };
        assert_eq!(&rec.bytes[..], raw.get().as_bytes());
        assert_eq!(&rec.bytes[..], text.as_bytes());
    }
    for seed in 0..25u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let max = [7, 100, 3000][seed as usize % 3];
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            at += rng.random_range(1..=max);
            if at >= body.len() {
                break;
            }
            cuts.push(at);
        }
        assert_eq!(run(&body, &cuts, limits), whole, "seed {seed}");
    }
}
