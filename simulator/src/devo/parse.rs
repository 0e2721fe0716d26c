//! Incremental parser for the byte stream a Devo syslog endpoint receives.
//!
//! Handles the three framings devo-sdk puts on the wire (docs/devo.md §1.3–§1.5):
//! * plain lines `<PRI>DATE HOST TAG: MESSAGE\n`, split on LF;
//! * octet-counted "multiline" frames `<len> <line>` (RFC 6587 style), recognised when a
//!   frame starts with decimal digits, one space and `<`;
//! * gzip members written straight into the stream ("zip" mode), recognised by the bytes
//!   `1f 8b 08` where a frame would start; the member is inflated incrementally (size
//!   capped, CRC and length checked) and the lines inside are parsed in turn.
//!
//! The parser is push based: feed it whatever a socket read returned; it hands out
//! borrowed [`LineRef`]s (no allocation per line) and keeps only an unfinished tail.
//! A line without a syslog header is reported under [`UNKNOWN_TAG`] with the whole line as
//! message, which is how Devo files events it cannot route.

use flate2::{Crc, Decompress, FlushDecompress, Status};

/// Tag given to lines that carry no parsable `<PRI>DATE HOST TAG:` header.
pub const UNKNOWN_TAG: &str = "unknown.unknown";

/// Default cap on one frame (line or octet-counted frame) and on one inflated gzip member.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Longest gzip header (FEXTRA/FNAME/FCOMMENT) we wait for before calling the stream broken.
const MAX_GZIP_HEADER: usize = 64 * 1024;

/// Inflate output chunk.
const INFLATE_CHUNK: usize = 64 * 1024;

const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// How a line was framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// A line terminated by LF.
    Line,
    /// An octet-counted frame `<len> <line>` (devo-sdk `multiline=True`).
    OctetCounted,
    /// A frame found inside a gzip member (devo-sdk `zip=True`).
    Gzip,
    /// An event received on the HTTP ingestion API.
    Http,
}

/// Errors that make the rest of a stream unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The gzip header or deflate data is invalid.
    #[error("invalid gzip member: {0}")]
    Gzip(String),
    /// The gzip trailer did not match the inflated data.
    #[error("gzip member checksum mismatch (crc32 expected {expected:08x}, got {actual:08x})")]
    GzipChecksum {
        /// CRC-32 from the trailer.
        expected: u32,
        /// CRC-32 of the inflated bytes.
        actual: u32,
    },
    /// The gzip trailer length did not match the inflated length.
    #[error("gzip member length mismatch (trailer says {expected}, inflated {actual} mod 2^32)")]
    GzipLength {
        /// ISIZE from the trailer.
        expected: u32,
        /// Inflated length modulo 2^32.
        actual: u32,
    },
    /// A gzip member inflated to more than the cap (decompression bomb guard).
    #[error("gzip member inflates to more than {limit} bytes")]
    InflatedTooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// The stream ended in the middle of a gzip member.
    #[error("stream ended inside a gzip member")]
    TruncatedGzip,
    /// A line grew beyond the frame cap without a terminating LF.
    #[error("line longer than {limit} bytes without a line feed")]
    LineTooLong {
        /// The cap in bytes.
        limit: usize,
    },
}

/// One received event, borrowed from the parser's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRef<'a> {
    /// `<PRI>` value; `None` when the line has no syslog header.
    pub pri: Option<u16>,
    /// Date field as sent (e.g. `Jan  1 00:00:00`); empty without a header.
    pub date: &'a [u8],
    /// Host name; empty without a header.
    pub host: &'a [u8],
    /// Tag without the trailing colon; [`UNKNOWN_TAG`] without a header.
    pub tag: &'a [u8],
    /// Payload after `TAG: `, without the final LF; the whole line without a header.
    pub message: &'a [u8],
    /// How the event was framed.
    pub framing: Framing,
    /// `false` when the stream ended before the line's LF (or the frame's last byte).
    pub terminated: bool,
}

/// Splits one syslog line (without its final LF) into its fields.
pub fn split_line(line: &[u8], framing: Framing, terminated: bool) -> LineRef<'_> {
    match split_syslog(line) {
        Some((pri, date, host, tag, message)) => LineRef {
            pri: Some(pri),
            date,
            host,
            tag,
            message,
            framing,
            terminated,
        },
        None => LineRef {
            pri: None,
            date: b"",
            host: b"",
            tag: UNKNOWN_TAG.as_bytes(),
            message: line,
            framing,
            terminated,
        },
    }
}

type Fields<'a> = (u16, &'a [u8], &'a [u8], &'a [u8], &'a [u8]);

fn split_syslog(line: &[u8]) -> Option<Fields<'_>> {
    let rest = line.strip_prefix(b"<")?;
    let close = rest.iter().take(4).position(|&b| b == b'>')?;
    let digits = &rest[..close];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let pri = digits
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    let rest = &rest[close + 1..];
    let (date, rest) = if rest.len() >= 16 && is_bsd_date(&rest[..15]) && rest[15] == b' ' {
        (&rest[..15], &rest[16..])
    } else {
        split_token(rest)?
    };
    let (host, rest) = split_token(rest)?;
    let (tag_token, message) = match rest.iter().position(|&b| b == b' ') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let tag = tag_token.strip_suffix(b":").unwrap_or(tag_token);
    if tag.is_empty() {
        return None;
    }
    Some((pri, date, host, tag, message))
}

/// `Mmm dd hh:mm:ss` with a space-padded day (RFC 3164 timestamp, 15 bytes).
fn is_bsd_date(d: &[u8]) -> bool {
    d.len() == 15
        && d[0].is_ascii_uppercase()
        && d[1].is_ascii_lowercase()
        && d[2].is_ascii_lowercase()
        && d[3] == b' '
        && (d[4] == b' ' || d[4].is_ascii_digit())
        && d[5].is_ascii_digit()
        && d[6] == b' '
        && d[7].is_ascii_digit()
        && d[8].is_ascii_digit()
        && d[9] == b':'
        && d[10].is_ascii_digit()
        && d[11].is_ascii_digit()
        && d[12] == b':'
        && d[13].is_ascii_digit()
        && d[14].is_ascii_digit()
}

/// A non-empty token up to the next space, and what follows that space.
fn split_token(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == b' ')?;
    if i == 0 {
        return None;
    }
    Some((&b[..i], &b[i + 1..]))
}

enum Prefix {
    NotCounted,
    NeedMore,
    Counted { header_len: usize, len: usize },
}

/// Recognises `<digits> <` at the start of `b` (the octet-counting prefix).
fn octet_prefix(b: &[u8], max_frame: usize) -> Prefix {
    let digits = b.iter().take(10).take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 9 {
        return Prefix::NotCounted;
    }
    if b.len() <= digits + 1 {
        return Prefix::NeedMore;
    }
    if b[digits] != b' ' || b[digits + 1] != b'<' {
        return Prefix::NotCounted;
    }
    let len = b[..digits]
        .iter()
        .fold(0usize, |acc, &d| acc * 10 + usize::from(d - b'0'));
    if len == 0 || len > max_frame {
        return Prefix::NotCounted;
    }
    Prefix::Counted {
        header_len: digits + 1,
        len,
    }
}

/// Position of the first LF (memchr: a byte-at-a-time scan of ~1 KB lines was the fake
/// Devo's largest cost, ~10% of a benchmark's CPU while a fast sender ran).
fn find_lf(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}

/// Length of a complete gzip member header at the start of `b`, `None` if more bytes are needed.
fn gzip_header_len(b: &[u8]) -> Result<Option<usize>, ParseError> {
    if b.len() < 10 {
        return Ok(None);
    }
    if b[..3] != GZIP_MAGIC {
        return Err(ParseError::Gzip("bad magic".into()));
    }
    let flags = b[3];
    if flags & 0xe0 != 0 {
        return Err(ParseError::Gzip("reserved header flags set".into()));
    }
    let mut n = 10;
    if flags & 0x04 != 0 {
        if b.len() < n + 2 {
            return Ok(None);
        }
        let xlen = usize::from(u16::from_le_bytes([b[n], b[n + 1]]));
        n += 2 + xlen;
    }
    for flag in [0x08u8, 0x10] {
        if flags & flag != 0 {
            match b.get(n..).and_then(|s| s.iter().position(|&c| c == 0)) {
                Some(i) => n += i + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 0x02 != 0 {
        n += 2;
    }
    Ok(if b.len() >= n { Some(n) } else { None })
}

enum GzStage {
    Header,
    Body,
    Trailer,
}

/// Incremental inflater for one gzip member.
pub(crate) struct GzMember {
    stage: GzStage,
    inflate: Decompress,
    crc: Crc,
    inflated: usize,
    max_inflated: usize,
    out: Vec<u8>,
}

impl GzMember {
    pub(crate) fn new(max_inflated: usize) -> Self {
        GzMember {
            stage: GzStage::Header,
            inflate: Decompress::new(false),
            crc: Crc::new(),
            inflated: 0,
            max_inflated,
            out: vec![0; INFLATE_CHUNK],
        }
    }

    /// Consumes what it can of `input`, passing inflated bytes to `on_data`. Returns the
    /// number of input bytes consumed and whether the member (trailer included) is complete.
    pub(crate) fn push(
        &mut self,
        input: &[u8],
        on_data: &mut dyn FnMut(&[u8]) -> Result<(), ParseError>,
    ) -> Result<(usize, bool), ParseError> {
        let mut used = 0;
        loop {
            match self.stage {
                GzStage::Header => match gzip_header_len(&input[used..])? {
                    Some(n) => {
                        used += n;
                        self.stage = GzStage::Body;
                    }
                    None if input.len() - used > MAX_GZIP_HEADER => {
                        return Err(ParseError::Gzip("header too long".into()));
                    }
                    None => return Ok((used, false)),
                },
                GzStage::Body => {
                    let before_in = self.inflate.total_in();
                    let before_out = self.inflate.total_out();
                    let status = self
                        .inflate
                        .decompress(&input[used..], &mut self.out, FlushDecompress::None)
                        .map_err(|e| ParseError::Gzip(e.to_string()))?;
                    // Both deltas are bounded by the slice lengths handed in, so they fit usize.
                    let consumed = (self.inflate.total_in() - before_in) as usize;
                    let produced = (self.inflate.total_out() - before_out) as usize;
                    used += consumed;
                    if produced > 0 {
                        self.inflated += produced;
                        if self.inflated > self.max_inflated {
                            return Err(ParseError::InflatedTooLarge {
                                limit: self.max_inflated,
                            });
                        }
                        let chunk = &self.out[..produced];
                        self.crc.update(chunk);
                        on_data(chunk)?;
                    }
                    if status == Status::StreamEnd {
                        self.stage = GzStage::Trailer;
                    } else if consumed == 0 && produced == 0 {
                        return Ok((used, false));
                    }
                }
                GzStage::Trailer => {
                    let t = &input[used..];
                    if t.len() < 8 {
                        return Ok((used, false));
                    }
                    let expected = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
                    let isize = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
                    used += 8;
                    if expected != self.crc.sum() {
                        return Err(ParseError::GzipChecksum {
                            expected,
                            actual: self.crc.sum(),
                        });
                    }
                    if isize != self.crc.amount() {
                        return Err(ParseError::GzipLength {
                            expected: isize,
                            actual: self.crc.amount(),
                        });
                    }
                    return Ok((used, true));
                }
            }
        }
    }
}

/// Inflates a body made of one or more concatenated gzip members, refusing to produce
/// more than `max_inflated` bytes in total.
pub fn gunzip_all(data: &[u8], max_inflated: usize) -> Result<Vec<u8>, ParseError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let budget = max_inflated.saturating_sub(out.len());
        let mut member = GzMember::new(budget);
        let (used, done) = member
            .push(&data[pos..], &mut |chunk| {
                out.extend_from_slice(chunk);
                Ok(())
            })
            .map_err(|e| match e {
                ParseError::InflatedTooLarge { .. } => ParseError::InflatedTooLarge {
                    limit: max_inflated,
                },
                other => other,
            })?;
        if !done {
            return Err(ParseError::TruncatedGzip);
        }
        pos += used;
    }
    Ok(out)
}

struct GzState {
    member: GzMember,
    inner: Box<StreamParser>,
}

/// Push parser for one connection's byte stream.
pub struct StreamParser {
    buf: Vec<u8>,
    gz: Option<GzState>,
    max_frame: usize,
    /// `None` for a top-level stream; `Some(Gzip)` for the parser of a gzip member's content.
    inner_framing: Option<Framing>,
    failed: Option<ParseError>,
}

impl Default for StreamParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl StreamParser {
    /// A parser capping frames and inflated gzip members at `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        StreamParser {
            buf: Vec::new(),
            gz: None,
            max_frame,
            inner_framing: None,
            failed: None,
        }
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Parses `data` (appended to any unfinished tail), calling `sink` for every complete
    /// event. After an error the parser stays failed and returns that error again.
    pub fn feed(
        &mut self,
        data: &[u8],
        sink: &mut dyn FnMut(LineRef<'_>),
    ) -> Result<(), ParseError> {
        self.run(data, false, sink)
    }

    /// Parses `data` (may be empty) as the end of the stream: an unterminated last line is
    /// emitted with `terminated: false`; a half-received gzip member is an error.
    pub fn finish(
        &mut self,
        data: &[u8],
        sink: &mut dyn FnMut(LineRef<'_>),
    ) -> Result<(), ParseError> {
        self.run(data, true, sink)
    }

    fn run(
        &mut self,
        data: &[u8],
        at_eof: bool,
        sink: &mut dyn FnMut(LineRef<'_>),
    ) -> Result<(), ParseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = if self.buf.is_empty() {
            // Fast path: parse straight from the caller's slice, keep only the tail.
            self.process(data, at_eof, sink).map(|used| {
                self.buf.extend_from_slice(&data[used..]);
            })
        } else {
            self.buf.extend_from_slice(data);
            let buf = std::mem::take(&mut self.buf);
            let result = self.process(&buf, at_eof, sink);
            self.buf = buf;
            result.map(|used| {
                self.buf.drain(..used);
            })
        };
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
        } else if at_eof {
            self.buf.clear();
        }
        result
    }

    fn framing(&self, top_level: Framing) -> Framing {
        self.inner_framing.unwrap_or(top_level)
    }

    /// Parses as many frames of `input` as possible; returns the bytes consumed.
    fn process(
        &mut self,
        input: &[u8],
        at_eof: bool,
        sink: &mut dyn FnMut(LineRef<'_>),
    ) -> Result<usize, ParseError> {
        let mut pos = 0;
        loop {
            if let Some(gz) = self.gz.as_mut() {
                let GzState { member, inner } = gz;
                let (used, done) =
                    member.push(&input[pos..], &mut |chunk| inner.feed(chunk, &mut *sink))?;
                pos += used;
                if done {
                    inner.finish(b"", &mut *sink)?;
                    self.gz = None;
                    continue;
                }
                if at_eof {
                    return Err(ParseError::TruncatedGzip);
                }
                return Ok(pos);
            }

            let avail = &input[pos..];
            if avail.is_empty() {
                return Ok(pos);
            }

            if self.inner_framing.is_none() && avail[0] == GZIP_MAGIC[0] {
                if avail.len() < GZIP_MAGIC.len() && !at_eof && GZIP_MAGIC.starts_with(avail) {
                    return Ok(pos);
                }
                if avail.starts_with(&GZIP_MAGIC) {
                    let mut inner = Box::new(StreamParser::new(self.max_frame));
                    inner.inner_framing = Some(Framing::Gzip);
                    self.gz = Some(GzState {
                        member: GzMember::new(self.max_frame),
                        inner,
                    });
                    continue;
                }
            }

            match octet_prefix(avail, self.max_frame) {
                Prefix::NeedMore if !at_eof => return Ok(pos),
                Prefix::Counted { header_len, len } => {
                    let framing = self.framing(Framing::OctetCounted);
                    let end = header_len + len;
                    if avail.len() < end {
                        if !at_eof {
                            return Ok(pos);
                        }
                        sink(split_line(&avail[header_len..], framing, false));
                        return Ok(input.len());
                    }
                    let frame = &avail[header_len..end];
                    let content = frame.strip_suffix(b"\n").unwrap_or(frame);
                    sink(split_line(content, framing, true));
                    pos += end;
                    continue;
                }
                Prefix::NeedMore | Prefix::NotCounted => {}
            }

            let framing = self.framing(Framing::Line);
            match find_lf(avail) {
                Some(i) => {
                    sink(split_line(&avail[..i], framing, true));
                    pos += i + 1;
                }
                None if at_eof => {
                    sink(split_line(avail, framing, false));
                    return Ok(input.len());
                }
                None if avail.len() > self.max_frame => {
                    return Err(ParseError::LineTooLong {
                        limit: self.max_frame,
                    });
                }
                None => return Ok(pos),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Debug, PartialEq)]
    struct Owned {
        pri: Option<u16>,
        date: String,
        host: String,
        tag: String,
        message: String,
        framing: Framing,
        terminated: bool,
    }

    fn own(l: LineRef<'_>) -> Owned {
        Owned {
            pri: l.pri,
            date: String::from_utf8_lossy(l.date).into_owned(),
            host: String::from_utf8_lossy(l.host).into_owned(),
            tag: String::from_utf8_lossy(l.tag).into_owned(),
            message: String::from_utf8_lossy(l.message).into_owned(),
            framing: l.framing,
            terminated: l.terminated,
        }
    }

    fn parse_in_chunks(data: &[u8], chunk: usize) -> Vec<Owned> {
        let mut out = Vec::new();
        let mut p = StreamParser::default();
        for c in data.chunks(chunk) {
            p.feed(c, &mut |l| out.push(own(l))).unwrap();
        }
        p.finish(b"", &mut |l| out.push(own(l))).unwrap();
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    // Proves the devo-sdk header is split into PRI, the 15-byte date, host, tag and message.
    #[test]
    fn splits_sdk_header() {
        let l = own(split_line(
            b"<14>Jan  1 00:00:00 host-1 cloud.office365.management.exchange: {\"a\": 1}",
            Framing::Line,
            true,
        ));
        assert_eq!(l.pri, Some(14));
        assert_eq!(l.date, "Jan  1 00:00:00");
        assert_eq!(l.host, "host-1");
        assert_eq!(l.tag, "cloud.office365.management.exchange");
        assert_eq!(l.message, "{\"a\": 1}");
    }

    // Proves a header-less line lands under unknown.unknown with the whole line as message.
    #[test]
    fn headerless_line_is_unknown() {
        let l = own(split_line(b"second line", Framing::Line, true));
        assert_eq!(l.pri, None);
        assert_eq!(l.tag, UNKNOWN_TAG);
        assert_eq!(l.message, "second line");
    }

    // Proves every chunking of a mixed stream (lines, octet-counted, gzip) parses identically.
    #[test]
    fn chunking_does_not_change_result() {
        let mut data = Vec::new();
        data.extend_from_slice(b"<14>Jan  1 00:00:00 h t.a: one\n");
        let framed = b"<14>Jan  1 00:00:00 h t.b: two\nlines\n";
        data.extend_from_slice(format!("{} ", framed.len()).as_bytes());
        data.extend_from_slice(framed);
        data.extend_from_slice(&gzip(
            b"<14>Jan  1 00:00:00 h t.c: three\n<14>Jan  1 00:00:00 h t.c: four\n",
        ));
        data.extend_from_slice(b"<131>May  1 10:07:00 h t.a: five");
        let whole = parse_in_chunks(&data, data.len());
        assert_eq!(whole.len(), 5);
        assert_eq!(whole[1].message, "two\nlines");
        assert_eq!(whole[1].framing, Framing::OctetCounted);
        assert_eq!(whole[2].framing, Framing::Gzip);
        assert_eq!(whole[3].message, "four");
        assert_eq!(whole[4].pri, Some(131));
        assert!(!whole[4].terminated);
        for chunk in [1, 2, 3, 7, 64] {
            assert_eq!(parse_in_chunks(&data, chunk), whole, "chunk size {chunk}");
        }
    }

    // Proves a digits-and-space line that is not followed by `<` stays a plain line.
    #[test]
    fn digits_without_header_are_not_octet_counting() {
        let out = parse_in_chunks(b"12 apples\n", 100);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].message, "12 apples");
        assert_eq!(out[0].framing, Framing::Line);
    }

    // Proves a corrupted gzip member is reported instead of producing garbage lines.
    #[test]
    fn corrupt_gzip_is_an_error() {
        let mut member = gzip(b"<14>Jan  1 00:00:00 h t: x\n");
        let n = member.len();
        member[n - 8] ^= 0xff; // break the CRC
        let mut p = StreamParser::default();
        let err = p.feed(&member, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ParseError::GzipChecksum { .. }), "{err}");
        assert!(p.feed(b"more\n", &mut |_| {}).is_err());
    }

    // Proves the inflate cap stops a member that expands beyond the limit.
    #[test]
    fn inflate_cap_is_enforced() {
        let member = gzip(&vec![b'a'; 1_000_000]);
        let mut p = StreamParser::new(10_000);
        let err = p.feed(&member, &mut |_| {}).unwrap_err();
        assert_eq!(err, ParseError::InflatedTooLarge { limit: 10_000 });
        assert!(matches!(
            gunzip_all(&member, 10_000),
            Err(ParseError::InflatedTooLarge { .. })
        ));
    }

    // Proves gunzip_all concatenates several members and rejects a truncated one.
    #[test]
    fn gunzip_all_handles_members() {
        let mut body = gzip(b"a\n");
        body.extend_from_slice(&gzip(b"b\n"));
        assert_eq!(gunzip_all(&body, 100).unwrap(), b"a\nb\n");
        assert_eq!(
            gunzip_all(&body[..body.len() - 3], 100),
            Err(ParseError::TruncatedGzip)
        );
    }
}
