//! The Devo line format: turns one audit record into the exact bytes Devo's own Python SDK
//! (devo-sdk 7.0.2, `devo.sender.Sender`) would put on the wire, plus the SDK's optional
//! compressed ("zip") mode.
//!
//! One event is one line, `<PRI>DATE HOST TAG: MESSAGE\n` (see `shared/docs/devo.md` §1.3):
//!
//! * `PRI` is `facility * 8 + severity`, by default `<14>` (user.info);
//! * `DATE` is by default the SDK's constant `Jan  1 00:00:00` (Devo uses ingestion time);
//! * one LF is appended unless the record already ends with one;
//! * with [`LineFormat::multiline`] the line is octet counted, `<len> <line>`, where `len`
//!   covers the whole line including its final LF (RFC 6587 style, §1.4).
//!
//! This code sits on the forwarder's hot path, so [`LineFormat::frame_into`] appends to a
//! caller-owned, reused `Vec<u8>` and never allocates per line (apart from the `Vec` growing).
//!
//! [`ZipBatcher`] reproduces the SDK's `zip=True` mode: whole lines are buffered and, once the
//! buffer exceeds its length (19 500 bytes by default) or on flush, the buffer becomes one gzip
//! member byte-identical to Python's `zlib.compressobj(-1, DEFLATED, 31)` (mtime 0, OS unix),
//! written into the stream with no further framing (§1.5).

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// The SDK's constant syslog date: `Jan`, two spaces, `1 00:00:00` (15 bytes).
pub const SDK_FIXED_DATE: &str = "Jan  1 00:00:00";

/// The SDK's default zip buffer length in bytes (`buffer.length`).
pub const DEFAULT_ZIP_BUFFER_LEN: usize = 19_500;

/// The SDK's default compression level (zlib's `Z_DEFAULT_COMPRESSION`, i.e. level 6).
pub const DEFAULT_ZIP_LEVEL: u32 = 6;

/// Which date goes into the syslog header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DateStyle {
    /// The SDK's constant [`SDK_FIXED_DATE`] (`Jan  1 00:00:00`). The default, and what the
    /// golden captures contain.
    #[default]
    Fixed,
    /// The current UTC time in RFC 3164 shape (`Mmm dd hh:mm:ss`, day padded with a space),
    /// taken when the line is framed.
    Rfc3164Now,
    /// A caller-chosen string, written as is (the SDK's `date=` keyword argument).
    Custom(String),
}

/// How records are turned into Devo lines. Built once from the configuration; cheap to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFormat {
    /// Syslog facility; the SDK default is 1 (user).
    pub facility: u8,
    /// Syslog severity; the SDK default is 6 (informational).
    pub severity: u8,
    /// The date written into the header.
    pub date: DateStyle,
    /// Host name written into the header, unchanged (the SDK does not sanitise it either).
    pub hostname: String,
    /// Octet-counted framing (`<len> <line>`), the SDK's `multiline=True`.
    pub multiline: bool,
}

impl Default for LineFormat {
    fn default() -> Self {
        LineFormat {
            facility: 1,
            severity: 6,
            date: DateStyle::Fixed,
            hostname: String::from("localhost"),
            multiline: false,
        }
    }
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Appends the decimal digits of `n` to `out` without allocating.
#[inline]
fn push_decimal(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        // `v % 10` is below 10, so the cast cannot truncate.
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Number of decimal digits of `n`.
#[inline]
fn decimal_len(n: usize) -> usize {
    let mut len = 1;
    let mut v = n / 10;
    while v != 0 {
        len += 1;
        v /= 10;
    }
    len
}

/// Writes `Mmm dd hh:mm:ss` for the current UTC time (15 bytes).
fn push_rfc3164_now(out: &mut Vec<u8>) {
    use chrono::{Datelike, Timelike};
    let now = chrono::Utc::now();
    let month = MONTHS[now.month0() as usize % 12];
    out.extend_from_slice(month);
    out.push(b' ');
    let day = now.day();
    out.push(if day < 10 {
        b' '
    } else {
        b'0' + (day / 10) as u8
    });
    out.push(b'0' + (day % 10) as u8);
    for (sep, v) in [
        (b' ', now.hour()),
        (b':', now.minute()),
        (b':', now.second()),
    ] {
        out.push(sep);
        out.push(b'0' + (v / 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    }
}

impl LineFormat {
    /// The SDK defaults (`<14>`, constant date, no multiline) with the given host name.
    pub fn sdk_default(hostname: impl Into<String>) -> Self {
        LineFormat {
            hostname: hostname.into(),
            ..LineFormat::default()
        }
    }

    /// The PRI value, `facility * 8 + severity` (not truncated: facility 31, severity 7 gives
    /// 255, and any larger input is written as the SDK would, in full).
    pub fn pri(&self) -> usize {
        usize::from(self.facility) * 8 + usize::from(self.severity)
    }

    fn date_len(&self) -> usize {
        match &self.date {
            DateStyle::Fixed | DateStyle::Rfc3164Now => SDK_FIXED_DATE.len(),
            DateStyle::Custom(s) => s.len(),
        }
    }

    /// Byte length of the full line (header, record and final LF), without the octet count.
    pub fn line_len(&self, tag: &str, record: &[u8]) -> usize {
        let pri = self.pri();
        // "<" PRI ">" DATE " " HOST " " TAG ": " RECORD ["\n"]
        2 + decimal_len(pri)
            + self.date_len()
            + 1
            + self.hostname.len()
            + 1
            + tag.len()
            + 2
            + record.len()
            + usize::from(!record.ends_with(b"\n"))
    }

    /// Bytes [`LineFormat::frame_into`] appends for `record`: the line, plus the octet count
    /// and its space in multiline mode.
    pub fn framed_len(&self, tag: &str, record: &[u8]) -> usize {
        let len = self.line_len(tag, record);
        if self.multiline {
            len + decimal_len(len) + 1
        } else {
            len
        }
    }

    /// Appends one framed line for `record` under `tag` to `out`.
    ///
    /// Never allocates beyond growing `out`; reuse `out` across batches.
    pub fn frame_into(&self, tag: &str, record: &[u8], out: &mut Vec<u8>) {
        if self.multiline {
            let len = self.line_len(tag, record);
            out.reserve(len + decimal_len(len) + 1);
            push_decimal(out, len);
            out.push(b' ');
        } else {
            out.reserve(self.line_len(tag, record));
        }
        out.push(b'<');
        push_decimal(out, self.pri());
        out.push(b'>');
        match &self.date {
            DateStyle::Fixed => out.extend_from_slice(SDK_FIXED_DATE.as_bytes()),
            DateStyle::Rfc3164Now => push_rfc3164_now(out),
            DateStyle::Custom(s) => out.extend_from_slice(s.as_bytes()),
        }
        out.push(b' ');
        out.extend_from_slice(self.hostname.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(record);
        if !record.ends_with(b"\n") {
            out.push(b'\n');
        }
    }

    /// Convenience for tests and cold paths: one framed line in a new `Vec`.
    pub fn frame(&self, tag: &str, record: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.frame_into(tag, record, &mut out);
        out
    }
}

/// The SDK's compressed mode: full lines are buffered; when the buffer grows beyond its
/// length, or on [`ZipBatcher::flush`], the whole buffer is emitted as one gzip member.
///
/// The gzip member is built by hand around a raw deflate stream (header `1f 8b 08 00`,
/// mtime 0, XFL as zlib sets it, OS 3; trailer CRC-32 and size), with the classic zlib
/// backend, so it is byte-identical to `zlib.compressobj(level, DEFLATED, 31)` as used by
/// devo-sdk. The deflate state is reset, not reallocated, between members.
pub struct ZipBatcher {
    buffer: Vec<u8>,
    buffer_len: usize,
    lines: usize,
    level: u32,
    compress: Compress,
}

impl std::fmt::Debug for ZipBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZipBatcher")
            .field("buffered_bytes", &self.buffer.len())
            .field("buffered_lines", &self.lines)
            .field("buffer_len", &self.buffer_len)
            .field("level", &self.level)
            .finish()
    }
}

impl Default for ZipBatcher {
    fn default() -> Self {
        ZipBatcher::new(DEFAULT_ZIP_BUFFER_LEN, DEFAULT_ZIP_LEVEL)
    }
}

impl ZipBatcher {
    /// A batcher flushing once more than `buffer_len` bytes are buffered, compressing at
    /// `level` (0–9; values above 9 are clamped to 9).
    pub fn new(buffer_len: usize, level: u32) -> Self {
        let level = level.min(9);
        ZipBatcher {
            buffer: Vec::with_capacity(buffer_len.saturating_add(4096)),
            buffer_len,
            lines: 0,
            level,
            compress: Compress::new(Compression::new(level), false),
        }
    }

    /// Bytes currently buffered (uncompressed).
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Lines currently buffered.
    pub fn buffered_lines(&self) -> usize {
        self.lines
    }

    /// Frames `record` with `format` into the buffer; if the buffer now exceeds its length,
    /// appends one gzip member to `out` and returns the number of lines it holds (else 0).
    pub fn push_record(
        &mut self,
        format: &LineFormat,
        tag: &str,
        record: &[u8],
        out: &mut Vec<u8>,
    ) -> usize {
        format.frame_into(tag, record, &mut self.buffer);
        self.after_push(out)
    }

    /// Appends an already framed line (or several) to the buffer; same flushing rule as
    /// [`ZipBatcher::push_record`]. `lines` is the number of events in `framed`.
    pub fn push_framed(&mut self, framed: &[u8], lines: usize, out: &mut Vec<u8>) -> usize {
        self.buffer.extend_from_slice(framed);
        self.lines += lines.saturating_sub(1);
        self.after_push(out)
    }

    fn after_push(&mut self, out: &mut Vec<u8>) -> usize {
        self.lines += 1;
        if self.buffer.len() > self.buffer_len {
            self.flush(out)
        } else {
            0
        }
    }

    /// Emits the buffered lines as one gzip member into `out` and returns how many lines it
    /// held; does nothing (returns 0) when the buffer is empty.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> usize {
        if self.buffer.is_empty() {
            return 0;
        }
        gzip_member_into(&mut self.compress, self.level, &self.buffer, out);
        let lines = self.lines;
        self.buffer.clear();
        self.lines = 0;
        lines
    }
}

/// Compresses `data` into one complete gzip member appended to `out`, exactly as zlib does
/// with `windowBits = 31` (gzip wrapper, default header), using `compress` (raw deflate).
pub fn gzip_member_into(compress: &mut Compress, level: u32, data: &[u8], out: &mut Vec<u8>) {
    compress.reset();
    // zlib's gzip header for a default gz_header: no flags, mtime 0, XFL from the level, OS 3.
    let xfl = if level == 9 {
        2
    } else if level < 2 {
        4
    } else {
        0
    };
    out.extend_from_slice(&[0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, xfl, 0x03]);
    let mut consumed = 0usize;
    loop {
        // Deflate never expands by more than a few bytes per 16 KiB block; keep headroom.
        out.reserve((data.len() - consumed) / 2 + 1024);
        let before_in = compress.total_in();
        let status = compress.compress_vec(&data[consumed..], out, FlushCompress::Finish);
        // total_in advanced by at most data.len(), which fits in usize.
        consumed += usize::try_from(compress.total_in() - before_in).unwrap_or(0);
        match status {
            Ok(Status::StreamEnd) => break,
            Ok(Status::Ok) | Ok(Status::BufError) => continue,
            // Compressing an in-memory buffer with a valid level cannot fail; zlib only
            // reports stream-state errors, which our reset-per-member use never produces.
            Err(_) => break,
        }
    }
    let mut crc = Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the input length modulo 2^32, by definition of the gzip format.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the decimal helpers agree with the standard formatter, including edges.
    #[test]
    fn decimal_helpers_match_std() {
        for n in [0usize, 9, 10, 99, 100, 255, 1_000_000, usize::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            assert_eq!(decimal_len(n), n.to_string().len());
        }
    }

    // Proves the RFC 3164 date is always 15 bytes in the `Mmm dd hh:mm:ss` shape.
    #[test]
    fn rfc3164_now_shape() {
        let mut out = Vec::new();
        push_rfc3164_now(&mut out);
        assert_eq!(out.len(), 15);
        assert_eq!(out[3], b' ');
        assert_eq!(out[9], b':');
        assert_eq!(out[12], b':');
    }
}
