//! Each kind of broken body is handled, counted and reported, and the rest of the blob is not
//! lost: oversized records, non-objects, missing ids, invalid UTF-8, malformed elements,
//! garbage between elements, truncated bodies and bodies that are not arrays.

use m365_consumer::split::{
    BlobIncomplete, RejectReason, Rejection, SplitItem, SplitLimits, Splitter, Summary,
};

/// Feeds `body` in chunks of `chunk` bytes.
fn split(
    body: &[u8],
    chunk: usize,
    limits: SplitLimits,
) -> (Vec<SplitItem>, Result<Summary, BlobIncomplete>) {
    let mut splitter = Splitter::new(limits);
    let mut items = Vec::new();
    for part in body.chunks(chunk.max(1)) {
        splitter.feed_into(part, &mut items);
    }
    (items, splitter.finish())
}

/// One line per item: the record id, or `!reason`.
fn shape(items: &[SplitItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i {
            SplitItem::Record(r) => r.id.clone(),
            SplitItem::Rejected(r) => format!("!{}", r.reason),
        })
        .collect()
}

fn rejection(items: &[SplitItem], n: usize) -> &Rejection {
    items
        .iter()
        .filter_map(|i| match i {
            SplitItem::Rejected(r) => Some(r),
            SplitItem::Record(_) => None,
        })
        .nth(n)
        .expect("rejection")
}

const CHUNKS: [usize; 4] = [1, 3, 64, usize::MAX];

// Proves an object over the cap in the middle is skipped (reported with its offset and
// length), its neighbours are kept, and it was never buffered beyond the cap.
#[test]
fn oversized_record_in_the_middle_is_skipped() {
    let big = format!(
        r#"{{"Id":"big","Pad":"{}","More":[{{"a":"}}]"}}]}}"#,
        "é".repeat(3000)
    );
    let body = format!(r#"[{{"Id":"a"}}, {big} ,{{"Id":"b"}}]"#);
    let limits = SplitLimits {
        max_record_bytes: 1000,
        excerpt_bytes: 16,
    };
    for chunk in CHUNKS {
        let (items, result) = split(body.as_bytes(), chunk, limits);
        assert_eq!(shape(&items), ["a", "!too_large", "b"], "chunk {chunk}");
        let rej = rejection(&items, 0);
        assert_eq!(rej.offset, 13);
        assert_eq!(rej.len as usize, big.len());
        assert_eq!(rej.excerpt, &big.as_bytes()[..16]);
        let summary = result.unwrap();
        assert_eq!(summary.rejected.get(RejectReason::TooLarge), 1);
        assert!(
            summary.high_water_bytes <= 1000,
            "{}",
            summary.high_water_bytes
        );
    }
}

// Proves elements that are valid JSON but not objects are NotAnObject, each counted once.
#[test]
fn non_object_elements_are_rejected() {
    let body = br#"[{"Id":"a"},"text",-1.5e3,[{"Id":"in-array"}],true,null,{"Id":"b"}]"#;
    for chunk in CHUNKS {
        let (items, result) = split(body, chunk, SplitLimits::default());
        assert_eq!(
            shape(&items),
            [
                "a",
                "!not_an_object",
                "!not_an_object",
                "!not_an_object",
                "!not_an_object",
                "!not_an_object",
                "b"
            ]
        );
        let summary = result.unwrap();
        assert_eq!(summary.rejected.get(RejectReason::NotAnObject), 5);
        assert_eq!(summary.records, 2);
        assert_eq!(summary.elements, 7);
    }
}

// Proves objects without a usable Id (absent, empty, null, an object) are MissingId.
#[test]
fn elements_without_id_are_rejected() {
    let body = br#"[{"Workload":"Exchange"},{"Id":""},{"Id":null},{"Id":{"x":1}},{"id":"lower"},{"Id":"ok"}]"#;
    let (items, result) = split(body, 5, SplitLimits::default());
    assert_eq!(
        shape(&items),
        [
            "!missing_id",
            "!missing_id",
            "!missing_id",
            "!missing_id",
            "!missing_id",
            "ok"
        ]
    );
    assert_eq!(rejection(&items, 0).excerpt, br#"{"Workload":"Exchange"}"#);
    assert_eq!(result.unwrap().rejected.get(RejectReason::MissingId), 5);
}

// Proves a record holding bytes that are not UTF-8 is InvalidUtf8 and its neighbours survive.
#[test]
fn invalid_utf8_inside_a_record_is_rejected() {
    let mut body = br#"[{"Id":"a"},{"Id":"bad","Name":"x"#.to_vec();
    body.extend_from_slice(&[0xC3, 0x28, 0xFF]);
    body.extend_from_slice(br#""},{"Id":"b"}]"#);
    for chunk in CHUNKS {
        let (items, result) = split(&body, chunk, SplitLimits::default());
        assert_eq!(shape(&items), ["a", "!invalid_utf8", "b"]);
        assert!(rejection(&items, 0).detail.is_some());
        assert_eq!(result.unwrap().rejected.get(RejectReason::InvalidUtf8), 1);
    }
}

// Proves malformed elements (a bad literal, a mismatched bracket, an unclosed object inside
// the element) are InvalidJson with the parser's message, and the scan resumes after them.
#[test]
fn malformed_elements_are_rejected_and_the_scan_resumes() {
    let body =
        br#"[{"Id":"a","x":tru},{"Id":"b","y":[}, {"Id":"c"},{"Id":"d","z":{"q":1]}, {"Id":"e"}]"#;
    for chunk in CHUNKS {
        let (items, result) = split(body, chunk, SplitLimits::default());
        assert_eq!(
            shape(&items),
            ["!invalid_json", "!invalid_json", "c", "!invalid_json", "e"],
            "chunk {chunk}"
        );
        assert!(
            rejection(&items, 0)
                .detail
                .as_deref()
                .unwrap()
                .contains("expected")
        );
        assert_eq!(rejection(&items, 1).offset, 20);
        assert_eq!(result.unwrap().rejected.get(RejectReason::InvalidJson), 3);
    }
}

// Proves garbage between elements, empty elements and bytes after the closing bracket are
// reported (or counted) without losing the records around them; a trailing comma is tolerated.
#[test]
fn garbage_between_elements_is_rejected() {
    let body = br#"[{"Id":"a"} trailing-junk, {"Id":"b"},@@@ {"nested":"]"} ,,{"Id":"c"}{"Id":"glued"},{"Id":"d"},] tail"#;
    for chunk in CHUNKS {
        let (items, result) = split(body, chunk, SplitLimits::default());
        assert_eq!(
            shape(&items),
            [
                "a",
                "!invalid_json",
                "b",
                "!invalid_json",
                "!invalid_json",
                "c",
                "!invalid_json",
                "d"
            ],
            "chunk {chunk}"
        );
        let summary = result.unwrap();
        assert_eq!(summary.rejected.get(RejectReason::InvalidJson), 4);
        assert_eq!(summary.trailing_bytes, 4);
        assert_eq!(
            rejection(&items, 0).excerpt,
            b" trailing-junk".get(1..).unwrap()
        );
    }
}

// Proves a body cut anywhere keeps every record completed before the cut and ends with a
// Truncated error pointing at the cut element; an empty body is Truncated too.
#[test]
fn truncated_body_keeps_records_before_the_cut() {
    let full = br#"[{"Id":"a","S":"x\"y"}, {"Id":"b"} ,{"Id":"c","N":[1,2]}]"#;
    for cut in 0..full.len() {
        let body = &full[..cut];
        for chunk in [1, 7, usize::MAX] {
            let (items, result) = split(body, chunk, SplitLimits::default());
            let err = result.expect_err("truncated");
            assert_eq!(err.rejection.reason, RejectReason::Truncated, "cut {cut}");
            assert_eq!(err.summary.rejected.get(RejectReason::Truncated), 1);
            let ids = shape(&items);
            let expected: Vec<&str> = [("a", 22), ("b", 34), ("c", 56)]
                .iter()
                .filter(|(_, end)| cut >= *end)
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(ids, expected, "cut {cut}");
            assert_eq!(err.summary.records as usize, expected.len());
            assert!(err.to_string().contains("truncated"));
        }
    }
    // The cut element's offset and partial length are reported.
    let (_, result) = split(&full[..30], 4, SplitLimits::default());
    let err = result.unwrap_err();
    assert_eq!(
        (err.rejection.offset, err.rejection.len, err.rejection.index),
        (24, 6, 1)
    );
    assert_eq!(err.rejection.excerpt, br#"{"Id":"#);
}

// Proves an HTML error page or a JSON object body is NotAnArray: the splitter stops at once,
// keeps an excerpt for the log, and yields nothing.
#[test]
fn body_that_is_not_an_array_is_refused() {
    for body in [
        &b"<html><body>Service Unavailable</body></html>"[..],
        br#"{"error":{"code":"AF20055","message":"x"}}"#,
        b"\xEF\xBB[1]",
        b"  null",
    ] {
        let mut splitter = Splitter::new(SplitLimits::default());
        assert!(splitter.feed(&body[..body.len() / 2]).is_empty());
        assert!(splitter.feed(&body[body.len() / 2..]).is_empty());
        assert!(splitter.is_stopped());
        let err = splitter.finish().unwrap_err();
        assert_eq!(err.rejection.reason, RejectReason::NotAnArray);
        assert_eq!(err.summary.rejected.total(), 1);
        assert!(!err.rejection.excerpt.is_empty());
    }
    let mut splitter = Splitter::new(SplitLimits::default());
    splitter.feed(b"<html>");
    assert!(
        splitter.is_stopped(),
        "stops at the first byte that cannot start an array"
    );
    assert_eq!(splitter.finish().unwrap_err().rejection.excerpt, b"<html>");
}

// Proves an empty body and a body of whitespace are reported as Truncated, not as success.
#[test]
fn empty_body_is_truncated() {
    for body in [&b""[..], b" \r\n", b"\xEF\xBB\xBF"] {
        let (items, result) = split(body, 1, SplitLimits::default());
        assert!(items.is_empty());
        assert_eq!(
            result.unwrap_err().rejection.reason,
            RejectReason::Truncated
        );
    }
}
