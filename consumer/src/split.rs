//! Incremental splitter for content blobs: a JSON array of audit records in, one item per
//! element out, as the bytes arrive.
//!
//! A blob from `GET {contentUri}` is one JSON array that can be hundreds of megabytes. The
//! consumer must not hold it whole, must forward every record as the exact bytes Microsoft sent
//! (no re-serialisation), and must read only `Id`, `Workload`, `CreationTime` and `RecordType`.
//! [`Splitter`] is a push parser for that job:
//!
//! * [`Splitter::feed`] takes the body in chunks of any size, split anywhere (inside a string, an
//!   escape or a multi-byte UTF-8 sequence), and returns the elements completed by that chunk;
//! * [`Splitter::finish`] closes the body and says whether the array was complete.
//!
//! How it works: an object that lies wholly inside the chunk being fed (most records, with
//! chunks of 16 KiB or more) takes a fast path: one `serde_json` pass, with a visitor that
//! borrows the four wanted fields and skips everything else, both finds where the object ends
//! and reads it; a UTF-8 check of its bytes follows (serde_json does not check skipped strings).
//! Everything else (an element cut by a chunk boundary, a malformed one, non-objects, garbage)
//! goes through a byte-level state machine that tracks nesting (a stack of open brackets, so a
//! mismatched `}`/`]` is caught) and string state, skipping string bodies with `memchr2` for
//! `"` and `\`; the completed element is then checked the same way. Only an element still
//! incomplete at the end of a chunk is buffered, and never beyond
//! [`SplitLimits::max_record_bytes`]: the splitter's own memory is bounded by that cap, whatever
//! the blob size (see [`Splitter::high_water_bytes`]). Each record is copied exactly once, from
//! the chunk (or the partial buffer, moved without a copy) into its own [`Bytes`]. The result
//! does not depend on where chunks are cut (tested at every cut point).
//!
//! Problems are reported per element and the scan goes on, so one bad element never loses the
//! rest of the blob ([`RejectReason`]):
//! * an object over the cap is skipped without buffering it (`TooLarge`);
//! * a string, number, array, `true`/`false`/`null` element is `NotAnObject`;
//! * an object without a usable `Id` is `MissingId`; invalid UTF-8 inside it is `InvalidUtf8`;
//! * an element `serde_json` refuses, a mismatched bracket, or garbage between elements is
//!   `InvalidJson`; the scanner resynchronises at the next top-level `,` (or the closing `]`);
//! * terminal problems come from [`Splitter::finish`] as a [`BlobIncomplete`] error: `Truncated`
//!   (the body ended inside the array, including an empty body) and `NotAnArray` (the body does
//!   not start with `[`, e.g. an HTML error page; [`Splitter::is_stopped`] turns true at once so
//!   the caller can stop downloading). Records yielded before the problem stay valid.
//!
//! Tolerated without a report: a UTF-8 byte-order mark and whitespace before `[`, a trailing
//! comma before `]`. Bytes after the closing `]` are ignored and counted in
//! [`Summary::trailing_bytes`].

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Default cap on one record's size: 900 KiB keeps every record under Kafka's default
/// `message.max.bytes` (1 MB) with room for the key and headers.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 900 * 1024;

/// Default number of leading bytes of a rejected element kept for the log line.
pub const DEFAULT_EXCERPT_BYTES: usize = 96;

/// Elements that are not objects are buffered only up to this size to check whether they are
/// valid JSON scalars (`NotAnObject`) or garbage (`InvalidJson`).
const SCALAR_CHECK_BYTES: usize = 128;

/// Open brackets tracked one by one for mismatch detection; deeper nesting is only counted
/// (such an element is refused by `serde_json`'s recursion limit of 128 anyway).
const MAX_TRACKED_DEPTH: usize = 512;

/// The UTF-8 byte-order mark some servers put before a JSON body.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Limits of one [`Splitter`]; built from the consumer's config by whoever owns the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLimits {
    /// Largest record forwarded, in bytes of its JSON text. A bigger object is skipped (its
    /// bytes are never buffered) and reported as [`RejectReason::TooLarge`].
    pub max_record_bytes: usize,
    /// How many leading bytes of a rejected element [`Rejection::excerpt`] keeps, for logs.
    pub excerpt_bytes: usize,
}

impl Default for SplitLimits {
    fn default() -> Self {
        SplitLimits {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            excerpt_bytes: DEFAULT_EXCERPT_BYTES,
        }
    }
}

/// One audit record cut out of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// The element's exact bytes as they were in the body, from `{` to `}` (no surrounding
    /// whitespace). Guaranteed valid UTF-8 and valid JSON.
    pub bytes: Bytes,
    /// The record `Id` (a JSON string; a JSON integer is accepted and kept as its digits).
    pub id: String,
    /// `Workload` when it is a string.
    pub workload: Option<String>,
    /// `CreationTime` as written by Microsoft (often without a zone); see
    /// [`RawRecord::creation_time_utc`].
    pub creation_time: Option<String>,
    /// `RecordType` when it is an integer or a string holding one.
    pub record_type: Option<i64>,
    /// Position of the element in the array (0-based, counting rejected elements too).
    pub index: u64,
    /// Byte offset of the element's first byte in the body.
    pub offset: u64,
}

impl RawRecord {
    /// `CreationTime` read leniently as UTC: `2024-05-01T10:11:12`, with a space instead of `T`,
    /// with fractional seconds, or with an explicit `Z`/offset (converted to UTC).
    pub fn creation_time_utc(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = self.creation_time.as_deref()?.trim();
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
            return Some(t.with_timezone(&chrono::Utc));
        }
        let text = text.strip_suffix('Z').unwrap_or(text);
        ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
            .iter()
            .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())
            .map(|naive| naive.and_utc())
    }
}

/// Why an element (or the whole body) was not turned into a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// An object longer than [`SplitLimits::max_record_bytes`]; skipped without buffering.
    TooLarge,
    /// A valid JSON element that is not an object (string, number, array, literal).
    NotAnObject,
    /// An object without an `Id`, or whose `Id` is empty, null or not a string/integer.
    MissingId,
    /// An object containing bytes that are not UTF-8.
    InvalidUtf8,
    /// A malformed element or garbage between elements; the scan resumes after the next
    /// top-level comma.
    InvalidJson,
    /// Terminal: the body ended inside the array (or was empty). Records before it are kept.
    Truncated,
    /// Terminal: the body is not a JSON array (its first byte is not `[`).
    NotAnArray,
}

impl RejectReason {
    /// Every reason, in the order used by [`RejectCounts`].
    pub const ALL: [RejectReason; 7] = [
        RejectReason::TooLarge,
        RejectReason::NotAnObject,
        RejectReason::MissingId,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::Truncated,
        RejectReason::NotAnArray,
    ];

    /// A fixed snake_case label, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingId => "missing_id",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::Truncated => "truncated",
            RejectReason::NotAnArray => "not_an_array",
        }
    }

    /// True for the reasons that end the blob (reported by [`Splitter::finish`]).
    pub fn is_terminal(self) -> bool {
        matches!(self, RejectReason::Truncated | RejectReason::NotAnArray)
    }

    fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rejected element, or the terminal problem of a body.
#[derive(Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Position in the array (0-based, counting records and rejections); for `Truncated` the
    /// position of the element that was cut (or would have come next), for `NotAnArray` 0.
    pub index: u64,
    /// What was wrong.
    pub reason: RejectReason,
    /// Byte offset in the body where the element (or the problem) starts.
    pub offset: u64,
    /// Bytes spanned by the element, as far as the body went.
    pub len: u64,
    /// The element's first bytes (at most [`SplitLimits::excerpt_bytes`]), for a log line.
    pub excerpt: Vec<u8>,
    /// The parser's message, when `serde_json` or UTF-8 validation gave one.
    pub detail: Option<String>,
}

impl Rejection {
    /// [`Rejection::excerpt`] as text, invalid UTF-8 replaced, for logs.
    pub fn excerpt_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.excerpt)
    }
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection")
            .field("index", &self.index)
            .field("reason", &self.reason)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("excerpt", &self.excerpt_lossy())
            .field("detail", &self.detail)
            .finish()
    }
}

/// What the splitter produced for one element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitItem {
    /// A record to forward.
    Record(RawRecord),
    /// An element that was skipped; the blob goes on.
    Rejected(Rejection),
}

/// Rejections counted by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectCounts([u64; 7]);

impl RejectCounts {
    /// How many elements were rejected for `reason`.
    pub fn get(&self, reason: RejectReason) -> u64 {
        self.0[reason.slot()]
    }

    /// All rejections, terminal ones included.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason with a non-zero count.
    pub fn iter(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }

    fn add(&mut self, reason: RejectReason) {
        self.0[reason.slot()] += 1;
    }
}

/// Totals of one body, from [`Splitter::finish`] (or [`Splitter::summary`] at any time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Elements seen (records + non-terminal rejections).
    pub elements: u64,
    /// Records yielded.
    pub records: u64,
    /// Rejections by reason, including the terminal one if any.
    pub rejected: RejectCounts,
    /// Body bytes fed.
    pub body_bytes: u64,
    /// Non-whitespace bytes after the closing `]` (ignored).
    pub trailing_bytes: u64,
    /// The most memory the splitter's own partial-element buffer ever held (capacity, bytes).
    /// Never more than [`SplitLimits::max_record_bytes`].
    pub high_water_bytes: usize,
}

/// The body did not hold a complete JSON array; records yielded before are still valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "blob body is {reason} at byte {offset} after {records} records",
    reason = rejection.reason,
    offset = rejection.offset,
    records = summary.records
)]
pub struct BlobIncomplete {
    /// The terminal problem (`Truncated` or `NotAnArray`).
    pub rejection: Rejection,
    /// Totals up to the problem (the terminal rejection is counted in it).
    pub summary: Summary,
}

/// Byte classes for the structural scan outside strings.
const C_OTHER: u8 = 0;
const C_QUOTE: u8 = 1;
const C_OPEN: u8 = 2;
const C_CLOSE: u8 = 3;
const C_COMMA: u8 = 4;

static CLASS: [u8; 256] = {
    let mut t = [C_OTHER; 256];
    t[b'"' as usize] = C_QUOTE;
    t[b'{' as usize] = C_OPEN;
    t[b'[' as usize] = C_OPEN;
    t[b'}' as usize] = C_CLOSE;
    t[b']' as usize] = C_CLOSE;
    t[b',' as usize] = C_COMMA;
    t
};

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before `[`: `bom` bytes of a byte-order mark matched so far.
    Preamble { bom: u8 },
    /// After `[` or `,`, waiting for an element or `]`.
    BeforeElement,
    /// Inside an element.
    InElement,
    /// After an element, waiting for `,` or `]`.
    AfterElement,
    /// After the closing `]`.
    Done,
    /// The body is not an array; everything further is ignored.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Starts with `{`: a candidate record, buffered up to the cap.
    Object,
    /// Starts with `[` or `"`: scanned to its end, never buffered, `NotAnObject`.
    OtherValue,
    /// Anything else (scalars, garbage, the rest of a broken element): runs to the next
    /// top-level `,` or `]`. `invalid` when it cannot be a valid element whatever it holds.
    Loose { invalid: bool },
}

enum Scan {
    /// The element ends before this index of the chunk (exclusive).
    Complete(usize),
    /// The chunk ended inside the element.
    NeedMore,
    /// A closing bracket did not match; scanning goes on as `Loose { invalid }` from here.
    Mismatch(usize),
}

/// Push parser turning a blob body into [`SplitItem`]s; one per body. See the module docs.
pub struct Splitter {
    limits: SplitLimits,
    state: State,
    /// Body offset of the first byte of the chunk being fed.
    pos: u64,
    /// Array position of the next element.
    index: u64,
    summary: Summary,
    terminal: Option<Rejection>,

    // The element being scanned.
    kind: Kind,
    elem_offset: u64,
    /// Bytes of the element in earlier chunks.
    elem_prev_len: u64,
    /// Where the element's part in the current chunk starts.
    seg_start: usize,
    /// Keep the element's bytes (`buf`) while this is true and it fits its cap.
    buffering: bool,
    buf: Vec<u8>,
    /// Leading bytes of an element that spans chunks and is not buffered.
    excerpt: Vec<u8>,
    in_string: bool,
    escaped: bool,
    /// Open brackets of an `Object`/`OtherValue` element.
    stack: Vec<u8>,
    /// Nesting beyond [`MAX_TRACKED_DEPTH`], or the depth of a `Loose` element.
    depth: u64,
}

impl fmt::Debug for Splitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Splitter")
            .field("limits", &self.limits)
            .field("state", &self.state)
            .field("pos", &self.pos)
            .field("index", &self.index)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Splitter {
    /// A splitter for one body.
    pub fn new(limits: SplitLimits) -> Self {
        Splitter {
            limits,
            state: State::Preamble { bom: 0 },
            pos: 0,
            index: 0,
            summary: Summary::default(),
            terminal: None,
            kind: Kind::Object,
            elem_offset: 0,
            elem_prev_len: 0,
            seg_start: 0,
            buffering: false,
            buf: Vec::new(),
            excerpt: Vec::new(),
            in_string: false,
            escaped: false,
            stack: Vec::new(),
            depth: 0,
        }
    }

    /// The limits this splitter was built with.
    pub fn limits(&self) -> SplitLimits {
        self.limits
    }

    /// Feeds the next chunk of the body and returns the elements it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SplitItem> {
        let mut out = Vec::new();
        self.feed_into(chunk, &mut out);
        out
    }

    /// Like [`Splitter::feed`], appending to `out` so its allocation can be reused.
    pub fn feed_into(&mut self, chunk: &[u8], out: &mut Vec<SplitItem>) {
        let n = chunk.len();
        let mut i = 0;
        while i < n {
            match self.state {
                State::Preamble { bom } => i = self.preamble(chunk, i, bom),
                State::BeforeElement => {
                    let b = chunk[i];
                    if is_ws(b) {
                        i += 1;
                    } else if b == b']' {
                        // `[]`, or a trailing comma before `]` (tolerated).
                        self.state = State::Done;
                        i += 1;
                    } else if b == b',' {
                        // An empty element: `[,` or `,,`.
                        let offset = self.pos + i as u64;
                        self.reject(out, RejectReason::InvalidJson, offset, 0, Vec::new(), None);
                        self.index += 1;
                        self.summary.elements += 1;
                        i += 1;
                    } else if b == b'{'
                        && let Some(end) = self.try_whole_object(chunk, i, out)
                    {
                        i = end;
                    } else {
                        let kind = match b {
                            b'{' => Kind::Object,
                            b'[' | b'"' => Kind::OtherValue,
                            _ => Kind::Loose { invalid: false },
                        };
                        self.begin(kind, i);
                    }
                }
                State::AfterElement => {
                    let b = chunk[i];
                    if is_ws(b) {
                        i += 1;
                    } else if b == b',' {
                        self.state = State::BeforeElement;
                        i += 1;
                    } else if b == b']' {
                        self.state = State::Done;
                        i += 1;
                    } else {
                        // Garbage after an element: `{..} x, {..}`.
                        self.begin(Kind::Loose { invalid: true }, i);
                    }
                }
                State::InElement => i = self.scan(chunk, i, out),
                State::Done => {
                    let rest = &chunk[i..];
                    self.summary.trailing_bytes +=
                        rest.iter().filter(|b| !is_ws(**b)).count() as u64;
                    i = n;
                }
                State::Stopped => i = n,
            }
        }
        if self.state == State::InElement {
            self.stash(chunk);
        }
        self.pos += n as u64;
        self.summary.body_bytes = self.pos;
    }

    /// True once the body is known not to be a JSON array: further input is ignored, and the
    /// caller may stop reading the body and call [`Splitter::finish`].
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// True once the closing `]` was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The most bytes the splitter's own partial-element buffer ever held (its capacity).
    pub fn high_water_bytes(&self) -> usize {
        self.summary.high_water_bytes
    }

    /// Totals so far.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// Ends the body. `Ok` when the array was closed by `]` (per-element rejections may still
    /// have happened: see [`Summary::rejected`]); `Err` when it was truncated or not an array.
    #[allow(
        clippy::result_large_err,
        reason = "called once per blob; the error carries the totals the caller reports"
    )]
    pub fn finish(mut self) -> Result<Summary, BlobIncomplete> {
        if let Some(rejection) = self.terminal.take() {
            // Not an array: already counted when it was found.
            return Err(BlobIncomplete {
                rejection,
                summary: self.summary,
            });
        }
        let rejection = match self.state {
            State::Done => return Ok(self.summary),
            State::InElement => {
                let excerpt = if self.buffering {
                    self.buf[..self.buf.len().min(self.limits.excerpt_bytes)].to_vec()
                } else {
                    std::mem::take(&mut self.excerpt)
                };
                let (offset, len) = (self.elem_offset, self.elem_prev_len);
                self.rejection(RejectReason::Truncated, offset, len, excerpt, None)
            }
            State::Preamble { .. }
            | State::BeforeElement
            | State::AfterElement
            | State::Stopped => {
                self.rejection(RejectReason::Truncated, self.pos, 0, Vec::new(), None)
            }
        };
        self.summary.rejected.add(rejection.reason);
        Err(BlobIncomplete {
            rejection,
            summary: self.summary,
        })
    }

    fn preamble(&mut self, chunk: &[u8], mut i: usize, mut bom: u8) -> usize {
        // `bom` < 3: that many byte-order-mark bytes matched from offset 0; 3: past the mark.
        while i < chunk.len() {
            let b = chunk[i];
            if bom < 3 {
                if b == BOM[usize::from(bom)] {
                    bom += 1;
                    self.state = State::Preamble { bom };
                    i += 1;
                    continue;
                }
                if bom > 0 {
                    // A byte-order mark cut short.
                    return self.not_an_array(chunk, i);
                }
                bom = 3;
                self.state = State::Preamble { bom };
            }
            if is_ws(b) {
                i += 1;
            } else if b == b'[' {
                self.state = State::BeforeElement;
                return i + 1;
            } else {
                return self.not_an_array(chunk, i);
            }
        }
        i
    }

    fn not_an_array(&mut self, chunk: &[u8], i: usize) -> usize {
        let end = chunk.len().min(i + self.limits.excerpt_bytes);
        let excerpt = chunk[i..end].to_vec();
        let offset = self.pos + i as u64;
        let rejection = self.rejection(RejectReason::NotAnArray, offset, 0, excerpt, None);
        self.summary.rejected.add(RejectReason::NotAnArray);
        self.terminal = Some(rejection);
        self.state = State::Stopped;
        chunk.len()
    }

    fn begin(&mut self, kind: Kind, i: usize) {
        self.state = State::InElement;
        self.kind = kind;
        self.elem_offset = self.pos + i as u64;
        self.elem_prev_len = 0;
        self.seg_start = i;
        self.buffering = !matches!(kind, Kind::OtherValue);
        self.buf.clear();
        self.excerpt.clear();
        self.in_string = false;
        self.escaped = false;
        self.stack.clear();
        self.depth = 0;
    }

    /// The most bytes the current element may have and still be buffered.
    fn cap(&self) -> usize {
        match self.kind {
            Kind::Object => self.limits.max_record_bytes,
            Kind::OtherValue => 0,
            Kind::Loose { .. } => SCALAR_CHECK_BYTES.min(self.limits.max_record_bytes),
        }
    }

    /// End of chunk inside an element: keep its bytes if it is still within its cap.
    fn stash(&mut self, chunk: &[u8]) {
        let seg = &chunk[self.seg_start..];
        let total = self.elem_prev_len + seg.len() as u64;
        if self.buffering && total > self.cap() as u64 {
            // Over the cap: stop buffering, keep only the excerpt, free the memory.
            let keep = self.buf.len().min(self.limits.excerpt_bytes);
            self.excerpt.clear();
            self.excerpt.extend_from_slice(&self.buf[..keep]);
            self.buf = Vec::new();
            self.buffering = false;
        }
        if self.buffering {
            self.append(seg);
        } else if self.excerpt.len() < self.limits.excerpt_bytes {
            let take = (self.limits.excerpt_bytes - self.excerpt.len()).min(seg.len());
            self.excerpt.extend_from_slice(&seg[..take]);
        }
        self.elem_prev_len = total;
        self.seg_start = 0;
    }

    /// Appends to the partial-element buffer, growing it geometrically but never past the
    /// element's cap (callers check the cap first), and records the high-water mark.
    fn append(&mut self, seg: &[u8]) {
        let needed = self.buf.len() + seg.len();
        if needed > self.buf.capacity() {
            let target = needed
                .max(self.buf.capacity() * 2)
                .min(self.cap().max(needed));
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(seg);
        self.summary.high_water_bytes = self.summary.high_water_bytes.max(self.buf.capacity());
    }

    /// Scans the current element from `i`; returns where the caller resumes.
    fn scan(&mut self, chunk: &[u8], i: usize, out: &mut Vec<SplitItem>) -> usize {
        let result = match self.kind {
            Kind::Object | Kind::OtherValue => self.scan_value(chunk, i),
            Kind::Loose { .. } => self.scan_loose(chunk, i),
        };
        match result {
            Scan::NeedMore => chunk.len(),
            Scan::Mismatch(at) => {
                // Keep scanning the rest as a broken element, resynchronising at the next
                // top-level comma.
                if self.buffering {
                    let keep = self.buf.len().min(self.limits.excerpt_bytes);
                    self.excerpt.clear();
                    self.excerpt.extend_from_slice(&self.buf[..keep]);
                    self.buf = Vec::new();
                }
                if self.elem_prev_len == 0 {
                    // The element started in this chunk: its excerpt comes from the chunk.
                    self.excerpt.clear();
                }
                self.buffering = false;
                self.kind = Kind::Loose { invalid: true };
                self.stack.clear();
                self.depth = 0;
                at
            }
            Scan::Complete(end) => {
                self.complete(chunk, end, out);
                end
            }
        }
    }

    /// Scan of an element that starts with `{`, `[` or `"`: ends when its nesting closes.
    fn scan_value(&mut self, chunk: &[u8], mut i: usize) -> Scan {
        let n = chunk.len();
        loop {
            if self.in_string {
                if self.escaped {
                    if i >= n {
                        return Scan::NeedMore;
                    }
                    self.escaped = false;
                    i += 1;
                }
                match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                    None => return Scan::NeedMore,
                    Some(off) => {
                        let j = i + off;
                        if chunk[j] == b'\\' {
                            if j + 1 < n {
                                i = j + 2;
                            } else {
                                self.escaped = true;
                                return Scan::NeedMore;
                            }
                        } else {
                            self.in_string = false;
                            i = j + 1;
                            if self.stack.is_empty() && self.depth == 0 {
                                return Scan::Complete(i);
                            }
                        }
                    }
                }
            } else {
                loop {
                    if i >= n {
                        return Scan::NeedMore;
                    }
                    let b = chunk[i];
                    i += 1;
                    match CLASS[b as usize] {
                        C_QUOTE => {
                            self.in_string = true;
                            break;
                        }
                        C_OPEN => {
                            if self.stack.len() < MAX_TRACKED_DEPTH {
                                self.stack.push(b);
                            } else {
                                self.depth += 1;
                            }
                        }
                        C_CLOSE => {
                            if self.depth > 0 {
                                self.depth -= 1;
                            } else {
                                let open = if b == b'}' { b'{' } else { b'[' };
                                if self.stack.pop() != Some(open) {
                                    return Scan::Mismatch(i);
                                }
                                if self.stack.is_empty() {
                                    return Scan::Complete(i);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Scan of a loose element: ends (exclusive) at the next top-level `,` or `]`.
    fn scan_loose(&mut self, chunk: &[u8], mut i: usize) -> Scan {
        let n = chunk.len();
        loop {
            if self.in_string {
                if self.escaped {
                    if i >= n {
                        return Scan::NeedMore;
                    }
                    self.escaped = false;
                    i += 1;
                }
                match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                    None => return Scan::NeedMore,
                    Some(off) => {
                        let j = i + off;
                        if chunk[j] == b'\\' {
                            if j + 1 < n {
                                i = j + 2;
                            } else {
                                self.escaped = true;
                                return Scan::NeedMore;
                            }
                        } else {
                            self.in_string = false;
                            i = j + 1;
                        }
                    }
                }
            } else {
                loop {
                    if i >= n {
                        return Scan::NeedMore;
                    }
                    let b = chunk[i];
                    match CLASS[b as usize] {
                        C_QUOTE => {
                            self.in_string = true;
                            i += 1;
                            break;
                        }
                        C_OPEN => self.depth += 1,
                        C_CLOSE if self.depth > 0 => self.depth -= 1,
                        C_CLOSE if b == b']' => return Scan::Complete(i),
                        C_COMMA if self.depth == 0 => return Scan::Complete(i),
                        _ => {}
                    }
                    i += 1;
                }
            }
        }
    }

    /// The element ended before `end` in `chunk`: turn it into an item.
    fn complete(&mut self, chunk: &[u8], end: usize, out: &mut Vec<SplitItem>) {
        let seg = &chunk[self.seg_start..end];
        let len = self.elem_prev_len + seg.len() as u64;
        let offset = self.elem_offset;
        self.state = State::AfterElement;
        self.summary.elements += 1;
        let within_cap = len <= self.cap() as u64;

        match self.kind {
            Kind::Object if self.buffering && within_cap => {
                let bytes = if self.buf.is_empty() {
                    Cow::Borrowed(seg)
                } else {
                    self.append(seg);
                    Cow::Owned(std::mem::take(&mut self.buf))
                };
                let fields = read_fields(&bytes);
                self.push_object(out, offset, bytes, fields);
            }
            Kind::Object => {
                let excerpt = self.take_excerpt(seg);
                self.reject(out, RejectReason::TooLarge, offset, len, excerpt, None);
            }
            Kind::OtherValue => {
                let excerpt = self.take_excerpt(seg);
                self.reject(out, RejectReason::NotAnObject, offset, len, excerpt, None);
            }
            Kind::Loose { invalid } => {
                let excerpt = self.take_excerpt(seg);
                let scalar_ok = !invalid && self.buffering && within_cap && {
                    self.append(seg);
                    serde_json::from_slice::<IgnoredAny>(&self.buf).is_ok()
                };
                let reason = if scalar_ok {
                    RejectReason::NotAnObject
                } else {
                    RejectReason::InvalidJson
                };
                self.reject(out, reason, offset, len, excerpt, None);
            }
        }
        self.buf.clear();
        self.index += 1;
    }

    /// Fast path for an object lying wholly in `chunk` from `i` (most records, with chunks of
    /// tens of KiB): one `serde_json` pass both finds its end and reads the four fields, so
    /// the byte scanner never runs over it. `None` when the object runs past the chunk or is
    /// malformed: the byte scanner then takes the element over from `i` and reports it.
    fn try_whole_object(
        &mut self,
        chunk: &[u8],
        i: usize,
        out: &mut Vec<SplitItem>,
    ) -> Option<usize> {
        let mut stream = serde_json::Deserializer::from_slice(&chunk[i..]).into_iter::<Found>();
        let found = stream.next()?.ok()?;
        let end = i + stream.byte_offset();
        let bytes = &chunk[i..end];
        let offset = self.pos + i as u64;
        self.summary.elements += 1;
        if bytes.len() > self.limits.max_record_bytes {
            let excerpt = bytes[..bytes.len().min(self.limits.excerpt_bytes)].to_vec();
            let len = bytes.len() as u64;
            self.reject(out, RejectReason::TooLarge, offset, len, excerpt, None);
        } else {
            // serde_json does not check UTF-8 inside the values it skips.
            let fields = match std::str::from_utf8(bytes) {
                Ok(_) => fields_from(found),
                Err(e) => Err((RejectReason::InvalidUtf8, Some(e.to_string()))),
            };
            self.push_object(out, offset, Cow::Borrowed(bytes), fields);
        }
        self.state = State::AfterElement;
        self.index += 1;
        Some(end)
    }

    /// Emits a complete object within the cap: a record, or its rejection.
    fn push_object(
        &mut self,
        out: &mut Vec<SplitItem>,
        offset: u64,
        bytes: Cow<'_, [u8]>,
        fields: Result<Fields, (RejectReason, Option<String>)>,
    ) {
        match fields {
            Ok(fields) => {
                out.push(SplitItem::Record(RawRecord {
                    // The one copy of the record (none when `bytes` is the moved buffer).
                    bytes: Bytes::from(bytes.into_owned()),
                    id: fields.id,
                    workload: fields.workload,
                    creation_time: fields.creation_time,
                    record_type: fields.record_type,
                    index: self.index,
                    offset,
                }));
                self.summary.records += 1;
            }
            Err((reason, detail)) => {
                let excerpt = bytes[..bytes.len().min(self.limits.excerpt_bytes)].to_vec();
                let len = bytes.len() as u64;
                self.reject(out, reason, offset, len, excerpt, detail);
            }
        }
    }

    /// The first bytes of the element that just completed with `seg` as its last part.
    fn take_excerpt(&mut self, seg: &[u8]) -> Vec<u8> {
        let limit = self.limits.excerpt_bytes;
        let mut excerpt = if self.elem_prev_len == 0 {
            Vec::new()
        } else if self.buffering {
            self.buf[..self.buf.len().min(limit)].to_vec()
        } else {
            std::mem::take(&mut self.excerpt)
        };
        if excerpt.len() < limit {
            let take = (limit - excerpt.len()).min(seg.len());
            excerpt.extend_from_slice(&seg[..take]);
        }
        excerpt
    }

    fn rejection(
        &self,
        reason: RejectReason,
        offset: u64,
        len: u64,
        excerpt: Vec<u8>,
        detail: Option<String>,
    ) -> Rejection {
        Rejection {
            index: self.index,
            reason,
            offset,
            len,
            excerpt,
            detail,
        }
    }

    fn reject(
        &mut self,
        out: &mut Vec<SplitItem>,
        reason: RejectReason,
        offset: u64,
        len: u64,
        excerpt: Vec<u8>,
        detail: Option<String>,
    ) {
        self.summary.rejected.add(reason);
        out.push(SplitItem::Rejected(
            self.rejection(reason, offset, len, excerpt, detail),
        ));
    }
}

/// The four fields read from a record.
struct Fields {
    id: String,
    workload: Option<String>,
    creation_time: Option<String>,
    record_type: Option<i64>,
}

/// Checks a complete object and reads its four fields.
fn read_fields(bytes: &[u8]) -> Result<Fields, (RejectReason, Option<String>)> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| (RejectReason::InvalidUtf8, Some(e.to_string())))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let found = de
        .deserialize_map(FieldsVisitor)
        .and_then(|found| de.end().map(|()| found))
        .map_err(|e| (RejectReason::InvalidJson, Some(e.to_string())))?;
    fields_from(found)
}

/// The four fields from what the visitor found; `MissingId` without a usable `Id`.
fn fields_from(found: Found<'_>) -> Result<Fields, (RejectReason, Option<String>)> {
    let id = match found.id {
        Some(Loose::Str(s)) if !s.is_empty() => s.into_owned(),
        Some(Loose::Int(n)) => n.to_string(),
        Some(Loose::UInt(n)) => n.to_string(),
        _ => return Err((RejectReason::MissingId, None)),
    };
    Ok(Fields {
        id,
        workload: found.workload.and_then(Loose::into_string),
        creation_time: found.creation_time.and_then(Loose::into_string),
        record_type: found.record_type.and_then(Loose::into_i64),
    })
}

#[derive(Default)]
struct Found<'de> {
    id: Option<Loose<'de>>,
    workload: Option<Loose<'de>>,
    creation_time: Option<Loose<'de>>,
    record_type: Option<Loose<'de>>,
}

impl<'de> de::Deserialize<'de> for Found<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an audit record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Found::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            // The first occurrence of a duplicated key wins.
            let slot = match key.0.as_ref() {
                "Id" => &mut found.id,
                "Workload" => &mut found.workload,
                "CreationTime" => &mut found.creation_time,
                "RecordType" => &mut found.record_type,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_none() {
                *slot = Some(map.next_value::<Loose<'de>>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A map key, borrowed from the input unless it had escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A field value of any JSON type, keeping only what the four fields can use.
enum Loose<'de> {
    Str(Cow<'de, str>),
    Int(i64),
    UInt(u64),
    Other,
}

impl Loose<'_> {
    fn into_string(self) -> Option<String> {
        match self {
            Loose::Str(s) => Some(s.into_owned()),
            _ => None,
        }
    }

    fn into_i64(self) -> Option<i64> {
        match self {
            Loose::Int(n) => Some(n),
            Loose::UInt(n) => i64::try_from(n).ok(),
            Loose::Str(s) => s.trim().parse().ok(),
            Loose::Other => None,
        }
    }
}

impl<'de> de::Deserialize<'de> for Loose<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Loose<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Owned(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Loose::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Loose::UInt(v))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
        }
        d.deserialize_any(V)
    }
}
