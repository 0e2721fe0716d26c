//! Behaviour of the line format beyond the golden captures: newline handling, octet counting,
//! PRI values, buffer reuse and the zip buffer threshold.

use m365_forwarder::framing::{DateStyle, LineFormat, ZipBatcher};

const TAG: &str = "cloud.office365.management.exchange";

// Proves a record already ending in LF gets no second LF, and an empty record still gets one.
#[test]
fn newline_added_only_when_missing() {
    let fmt = LineFormat::sdk_default("h");
    assert_eq!(fmt.frame("t", b"x\n"), b"<14>Jan  1 00:00:00 h t: x\n");
    assert_eq!(fmt.frame("t", b"x"), b"<14>Jan  1 00:00:00 h t: x\n");
    assert_eq!(fmt.frame("t", b""), b"<14>Jan  1 00:00:00 h t: \n");
}

// Proves the octet count covers header, payload and final LF, also for multi-digit PRIs.
#[test]
fn multiline_octet_count_covers_whole_line() {
    for (facility, severity) in [(0u8, 0u8), (1, 6), (23, 7), (31, 7)] {
        let fmt = LineFormat {
            facility,
            severity,
            multiline: true,
            ..LineFormat::sdk_default("host")
        };
        let framed = fmt.frame(TAG, b"a\nb");
        let space = framed
            .iter()
            .position(|&b| b == b' ')
            .expect("count separator");
        let count: usize = std::str::from_utf8(&framed[..space])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(count, framed.len() - space - 1);
        assert!(
            framed[space + 1..]
                .starts_with(format!("<{}>", facility as u32 * 8 + severity as u32).as_bytes())
        );
        assert!(framed.ends_with(b"a\nb\n"));
    }
}

// Proves PRI is facility*8+severity, e.g. local0.err = <131>, and 0 renders as <0>.
#[test]
fn pri_values() {
    let mut fmt = LineFormat::sdk_default("h");
    fmt.facility = 16;
    fmt.severity = 3;
    assert!(fmt.frame("t", b"m").starts_with(b"<131>"));
    fmt.facility = 0;
    fmt.severity = 0;
    assert!(fmt.frame("t", b"m").starts_with(b"<0>"));
}

// Proves frame_into appends (does not clear) and that the reused buffer keeps its capacity.
#[test]
fn frame_into_appends_to_reused_buffer() {
    let fmt = LineFormat::sdk_default("h");
    let mut out = Vec::with_capacity(4096);
    let ptr = out.as_ptr();
    for _ in 0..10 {
        fmt.frame_into("t", b"{}", &mut out);
    }
    assert_eq!(out.len(), 10 * fmt.line_len("t", b"{}"));
    assert_eq!(out.as_ptr(), ptr, "no reallocation within capacity");
    out.clear();
    fmt.frame_into("t", b"{}", &mut out);
    assert_eq!(out, b"<14>Jan  1 00:00:00 h t: {}\n");
}

// Proves the current-time date style yields a well-formed 15-byte RFC 3164 date.
#[test]
fn rfc3164_now_date_shape() {
    let fmt = LineFormat {
        date: DateStyle::Rfc3164Now,
        ..LineFormat::sdk_default("h")
    };
    let line = fmt.frame("t", b"m");
    let date = &line[4..19];
    assert!(date[..3].iter().all(u8::is_ascii_alphabetic));
    assert_eq!(&line[19..], b" h t: m\n");
    assert_eq!(line.len(), fmt.line_len("t", b"m"));
}

// Proves the zip buffer emits a member only once it EXCEEDS its length, with all lines in it,
// and that the member decompresses to exactly the framed lines.
#[test]
fn zip_flushes_when_buffer_exceeds_length() {
    use std::io::Write;
    let fmt = LineFormat::sdk_default("h");
    let line_len = fmt.line_len("t", b"0123456789");
    let mut zip = ZipBatcher::new(line_len * 3, 6);
    let mut out = Vec::new();
    for _ in 0..3 {
        assert_eq!(zip.push_record(&fmt, "t", b"0123456789", &mut out), 0);
    }
    assert_eq!(zip.buffered_lines(), 3);
    assert_eq!(zip.push_record(&fmt, "t", b"0123456789", &mut out), 4);
    assert_eq!(zip.buffered_bytes(), 0);
    let mut plain = flate2::write::GzDecoder::new(Vec::new());
    plain.write_all(&out).unwrap();
    let plain = plain.finish().unwrap();
    assert_eq!(plain, fmt.frame("t", b"0123456789").repeat(4));
}
