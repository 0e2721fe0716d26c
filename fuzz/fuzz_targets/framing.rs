//! Fuzz target `framing`: the forwarder's Devo line format (`LineFormat::frame_into`, plain and
//! octet-counted) and the SDK "zip" mode (`ZipBatcher`), on arbitrary formats, tags and records.
//!
//! Invariants:
//! * plain: each line is exactly `<PRI>DATE HOST TAG: RECORD` plus one LF when the record
//!   does not already end with one (so the output ends with LF and one LF is added per record
//!   at most), its length is `line_len`, and `frame_into` only appends;
//! * multiline: `<len> <line>` where `len` is the byte length of `<line>`, the plain line;
//! * zip: the gzip members the batcher emits, gunzipped (with the workspace's capped reader),
//!   are exactly the framed lines in order, and the line counts it returns add up.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use m365_common::decompress::gunzip_to_vec;
use m365_forwarder::framing::{DateStyle, LineFormat, ZipBatcher};

#[derive(Debug, Arbitrary)]
enum Date {
    Fixed,
    Now,
    Custom(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    facility: u8,
    severity: u8,
    date: Date,
    hostname: String,
    multiline: bool,
    zip_buffer_len: u16,
    zip_level: u8,
    records: Vec<(String, Vec<u8>)>,
}

/// The plain line the format must produce, built independently (date given).
fn expected_line(format: &LineFormat, date: &[u8], tag: &str, record: &[u8]) -> Vec<u8> {
    let mut line = format!(
        "<{}>",
        usize::from(format.facility) * 8 + usize::from(format.severity)
    )
    .into_bytes();
    line.extend_from_slice(date);
    line.push(b' ');
    line.extend_from_slice(format.hostname.as_bytes());
    line.push(b' ');
    line.extend_from_slice(tag.as_bytes());
    line.extend_from_slice(b": ");
    line.extend_from_slice(record);
    if !record.ends_with(b"\n") {
        line.push(b'\n');
    }
    line
}

/// Checks one framed line against the format; returns the plain line inside it.
fn check_framed<'a>(format: &LineFormat, tag: &str, record: &[u8], framed: &'a [u8]) -> &'a [u8] {
    let line = if format.multiline {
        let space = framed
            .iter()
            .position(|b| *b == b' ')
            .expect("octet count then a space");
        let count: usize = std::str::from_utf8(&framed[..space])
            .expect("ASCII count")
            .parse()
            .expect("decimal count");
        let line = &framed[space + 1..];
        assert_eq!(count, line.len(), "octet count does not match the line");
        line
    } else {
        framed
    };
    assert_eq!(
        line.len(),
        format.line_len(tag, record),
        "line_len disagrees"
    );
    assert_eq!(line.last(), Some(&b'\n'), "line does not end with LF");
    let date: Vec<u8> = match &format.date {
        DateStyle::Fixed => b"Jan  1 00:00:00".to_vec(),
        DateStyle::Custom(s) => s.as_bytes().to_vec(),
        DateStyle::Rfc3164Now => {
            // The clock moves: take the 15 date bytes from the line itself, check their shape.
            let start = line.iter().position(|b| *b == b'>').expect("PRI closes") + 1;
            let date = &line[start..start + 15];
            assert!(date[3] == b' ' && date[6] == b' ' && date[9] == b':' && date[12] == b':');
            date.to_vec()
        }
    };
    assert_eq!(
        line,
        &expected_line(format, &date, tag, record)[..],
        "line shape"
    );
    line
}

fuzz_target!(|input: Input| {
    let format = LineFormat {
        facility: input.facility,
        severity: input.severity,
        date: match input.date {
            Date::Fixed => DateStyle::Fixed,
            Date::Now => DateStyle::Rfc3164Now,
            Date::Custom(s) => DateStyle::Custom(s),
        },
        hostname: input.hostname,
        multiline: input.multiline,
    };
    let records = &input.records[..input.records.len().min(64)];

    // Line by line, appending to one buffer.
    let mut all = b"prefix".to_vec();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for (tag, record) in records {
        let before = all.len();
        format.frame_into(tag, record, &mut all);
        assert_eq!(&all[..6], b"prefix", "frame_into overwrote earlier bytes");
        let framed = all[before..].to_vec();
        check_framed(&format, tag, record, &framed);
        if !matches!(format.date, DateStyle::Rfc3164Now) {
            assert_eq!(
                framed,
                format.frame(tag, record),
                "frame and frame_into differ"
            );
        }
        lines.push(framed);
    }

    // Zip mode: same lines, batched into gzip members.
    let mut batcher = ZipBatcher::new(
        usize::from(input.zip_buffer_len),
        u32::from(input.zip_level),
    );
    let mut out = Vec::new();
    let mut counted = 0;
    for (tag, record) in records {
        counted += batcher.push_record(&format, tag, record, &mut out);
    }
    counted += batcher.flush(&mut out);
    assert_eq!(counted, records.len(), "zip line counts do not add up");
    assert_eq!(batcher.buffered_bytes(), 0);
    if records.is_empty() {
        assert!(out.is_empty(), "zip output without records");
        return;
    }
    let inflated = gunzip_to_vec(&out[..], 64 << 20).expect("zip output gunzips");
    if matches!(format.date, DateStyle::Rfc3164Now) {
        assert_eq!(inflated.len(), lines.iter().map(Vec::len).sum::<usize>());
    } else {
        assert_eq!(
            inflated,
            lines.concat(),
            "zip members do not hold the framed lines"
        );
    }
});
