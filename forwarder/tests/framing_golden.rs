//! Byte-for-byte comparison of our framing with the captures of Devo's own Python SDK
//! (`shared/golden/`): the same calls as `capture_devo_sdk.py` must give the same bytes.

use m365_forwarder::framing::{DateStyle, LineFormat, ZipBatcher};

const TAG: &str = "cloud.office365.management.exchange";
const FIXED_HOST: &str = "golden-collector-host";
/// `socket.gethostname()` of the machine that made the capture (call 7).
const CAPTURE_MACHINE_HOST: &str = "vm";

fn golden(name: &str) -> Vec<u8> {
    let path = format!("{}/../../shared/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The script's `exchange_event(n, extra)`: compact JSON, keys in insertion order,
/// non-ASCII kept as UTF-8 (`ensure_ascii=False`).
fn exchange_event(n: u32, extra: Option<(&str, &str)>) -> String {
    let mut s = format!(
        concat!(
            r#"{{"CreationTime":"2024-05-01T10:{n:02}:00","Id":"00000000-0000-0000-0000-{n:012}","#,
            r#""Operation":"MailItemsAccessed","OrganizationId":"11111111-2222-3333-4444-555555555555","#,
            r#""RecordType":50,"ResultStatus":"Succeeded","UserKey":"10032000ABCDEF00","UserType":0,"#,
            r#""Version":1,"Workload":"Exchange","UserId":"alice@example.com""#
        ),
        n = n
    );
    if let Some((k, v)) = extra {
        s.push_str(&format!(r#","{k}":"{v}""#));
    }
    s.push('}');
    s
}

/// Replays the nine scripted calls of `build_calls()` into one stream.
fn replay_session() -> Vec<u8> {
    let sdk = LineFormat::sdk_default(FIXED_HOST);
    let multiline = LineFormat {
        multiline: true,
        ..sdk.clone()
    };
    let machine = LineFormat::sdk_default(CAPTURE_MACHINE_HOST);
    let custom = LineFormat {
        facility: 16,
        severity: 3,
        date: DateStyle::Custom("May  1 10:07:00".into()),
        ..sdk.clone()
    };
    let pad = "A".repeat(200 * 1024);
    let mut out = Vec::new();
    sdk.frame_into(TAG, exchange_event(1, None).as_bytes(), &mut out);
    let unicode = exchange_event(2, Some(("Subject", "Réunion ñandú – 東京 ✓ 🚀")));
    sdk.frame_into(TAG, unicode.as_bytes(), &mut out);
    sdk.frame_into(TAG, b"first line\nsecond line", &mut out);
    multiline.frame_into(TAG, b"first line\nsecond line", &mut out);
    sdk.frame_into(
        TAG,
        format!("{}\n", exchange_event(3, None)).as_bytes(),
        &mut out,
    );
    sdk.frame_into(TAG, exchange_event(4, None).as_bytes(), &mut out);
    sdk.frame_into(
        TAG,
        exchange_event(5, Some(("Pad", &pad))).as_bytes(),
        &mut out,
    );
    machine.frame_into(TAG, exchange_event(6, None).as_bytes(), &mut out);
    custom.frame_into(TAG, exchange_event(7, None).as_bytes(), &mut out);
    out
}

// Proves the plain session (TLS capture) is reproduced exactly, all 207 834 bytes.
#[test]
fn sdk_session_is_byte_identical() {
    let expected = golden("devo-sdk-sender-capture.bin");
    let ours = replay_session();
    assert_eq!(ours.len(), expected.len(), "length differs");
    if let Some(pos) = ours.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "first difference at byte {pos}: ours {:?} vs sdk {:?}",
            String::from_utf8_lossy(&ours[pos.saturating_sub(20)..(pos + 20).min(ours.len())]),
            String::from_utf8_lossy(
                &expected[pos.saturating_sub(20)..(pos + 20).min(expected.len())]
            )
        );
    }
    assert_eq!(ours, expected);
}

// Proves the plain-TCP capture is the same stream (one format for both transports).
#[test]
fn sdk_tcp_capture_is_byte_identical() {
    assert_eq!(replay_session(), golden("devo-sdk-sender-capture-tcp.bin"));
}

// Proves the zip mode (4 events then flush) gives the SDK's 314-byte gzip member exactly.
#[test]
fn sdk_zip_session_is_byte_identical() {
    let expected = golden("devo-sdk-sender-capture-zip.bin");
    let fmt = LineFormat::sdk_default(FIXED_HOST);
    let mut zip = ZipBatcher::default();
    let mut out = Vec::new();
    for n in 10..14 {
        let flushed = zip.push_record(&fmt, TAG, exchange_event(n, None).as_bytes(), &mut out);
        assert_eq!(flushed, 0, "the SDK buffered all four events (returned 0)");
    }
    assert!(out.is_empty());
    assert_eq!(zip.flush(&mut out), 4, "flush_buffer() returned 4");
    assert_eq!(out.len(), 314);
    assert_eq!(out, expected);
    assert_eq!(zip.flush(&mut out), 0, "an empty buffer emits nothing");
    assert_eq!(out.len(), 314);
}

// Proves the first captured line matches the documented 398-byte example and PRI/date layout.
#[test]
fn first_line_matches_documented_header() {
    let fmt = LineFormat::sdk_default(FIXED_HOST);
    let line = fmt.frame(TAG, exchange_event(1, None).as_bytes());
    assert_eq!(line.len(), 398);
    assert!(line.starts_with(
        b"<14>Jan  1 00:00:00 golden-collector-host cloud.office365.management.exchange: {"
    ));
    assert_eq!(fmt.line_len(TAG, exchange_event(1, None).as_bytes()), 398);
}
