//! Record-`Id` deduplication for one stream: a bloom filter of rotating generations, with a
//! versioned snapshot format to keep it across restarts and partition reassignment.
//!
//! Microsoft's pipeline can serve the same record twice (in two blobs); the consumer forwards a
//! record only the first time its `Id` is seen on its stream (tenant, content type). A false
//! positive of the filter drops a record that was never sent, so the filter is sized for that to
//! be rare: the expected number of wrongly dropped records over the filter's life is below
//! [`DEFAULT_MAX_EXPECTED_FALSE_DROPS`] (0.001).
//!
//! # Sizing
//!
//! Inputs (Devo's collector option names): `n` = `override_bloom_filter_size` = expected records
//! to remember ([`DedupSettings::expected_items`]), `c` = `override_bloom_filter_buffer_size` =
//! records per generation ([`DedupSettings::generation_items`]), `D` = the allowed expected
//! false drops.
//!
//! * Generations kept: `G = ceil(n / c) + 1`. The `G - 1` older generations are full, so the
//!   filter always remembers at least the last `(G - 1)·c ≥ n` ids (the *horizon*); an id is
//!   forgotten after at most `G·c` further insertions, when its generation is dropped.
//! * A lookup checks all `G` generations, each holding at most `c` ids in `m` bits with `k`
//!   hashes: `p = (1 - e^(-k·c/m))^k` per generation, `p_lookup = 1 - (1 - p)^G ≤ G·p`.
//! * Over the filter's life (`n` lookups of fresh ids) the expected false drops are
//!   `n · p_lookup`. Requiring `n · G · p ≤ D` gives the target `p* = D / (n·G)`, then the
//!   classic optimum `m = ceil(-c · ln p* / (ln 2)²)` (rounded up to a multiple of 64) and
//!   `k = round(m/c · ln 2)`; `m` is then grown until `n · p_lookup < D` holds exactly for the
//!   rounded values.
//! * Defaults (`n` = 1,000,000, `c` = 250,000, `D` = 0.001): `G` = 5, `p*` = 2e-10,
//!   `m` = 11,736,960 bits (≈ 46.9 bits per id), `k` = 33, memory 7,335,600 bytes (≈ 7.3 MB)
//!   per stream, expected false drops ≈ 0.0008. The
//!   numbers are asserted by a test (`dedup_sizing.rs`) and available from
//!   [`DedupSettings::plan`].
//!
//! Ids are hashed with keyed SipHash-1-3 (128-bit output) over the id's UTF-8 bytes. Each of the
//! `k` bit positions is drawn from that hash by its own mixing step (the SplitMix64 finaliser of
//! the first half plus the probe's index, XOR the second half), so two ids share all their
//! positions only when their 128-bit hashes collide. The 128-bit key (the *seed*) is random per
//! filter and persisted with the bits, so a restored filter answers exactly as before.
//!
//! Format version 1 derived the positions by enhanced double hashing over the two halves. That
//! scheme makes two ids whose halves land close together share *every* position, a
//! false-positive floor near `c / m²` per generation that the plan does not count: with the test
//! settings (`m` = 33,984, `c` = 1,000) it measured 5.8e-6 per lookup against a planned 3.2e-7,
//! and with the defaults it is ≈ 7× the planned rate. Version 2 snapshots use the scheme above;
//! a version 1 snapshot is still restored and keeps its old scheme (its bits were set with it),
//! so a restart never forgets what was seen. New filters are always version 2.
//!
//! # Persistence
//!
//! [`Dedup::to_snapshot`] writes format version 2 (version 1 differs only in how positions are
//! derived, above), little-endian:
//!
//! ```text
//! magic "M365DDUP" | version u16 | reserved u16 | seed [u8;16]
//! expected_items u64 | generation_items u64 | max_expected_false_drops f64
//! generations_max u32 | hashes u32 | bits_per_generation u64 | inserted_total u64
//! generation_count u32 | per generation, oldest first: items u64, bits (m/64 × u64)
//! crc32 (IEEE) of everything before it, u32
//! ```
//!
//! A snapshot is about the filter's memory (≈ 7.3 MB with the defaults), too big for one Kafka
//! message at the default 1 MB limit: [`Dedup::to_snapshot_parts`] cuts it into numbered parts
//! of at most `max_part_bytes` (e.g. 900 KB) that [`Dedup::from_snapshot_parts`] checks and joins.
//! Store each part under its own key in the compacted `m365.state` topic (e.g.
//! `dedup/{tenant}/{content_type}/{index}`) and write snapshots periodically and on shutdown or
//! revocation, not per blob; ids seen after the last snapshot are forgotten by a crash, which can
//! only let a duplicate through, never drop a record. A restored filter keeps the parameters it
//! was saved with ([`Dedup::settings`]); the caller decides what to do if the configuration
//! changed since.

use std::collections::VecDeque;
use std::fmt;

use siphasher::sip128::SipHasher13;

/// Default `override_bloom_filter_size`: records remembered per stream.
pub const DEFAULT_EXPECTED_ITEMS: u64 = 1_000_000;
/// Default expected wrongly dropped records over the filter's life.
pub const DEFAULT_MAX_EXPECTED_FALSE_DROPS: f64 = 0.001;
/// Largest accepted `expected_items` / `generation_items`.
pub const MAX_ITEMS: u64 = 1_000_000_000;
/// Largest filter memory (all generations) [`DedupSettings::validate`] accepts: 2 GiB.
pub const MAX_MEMORY_BYTES: u64 = 2 << 30;
/// Most hash functions a plan may use.
const MAX_HASHES: u32 = 64;

const MAGIC: &[u8; 8] = b"M365DDUP";
const PART_MAGIC: &[u8; 8] = b"M365DDPT";
/// Snapshot format version of new filters.
pub const SNAPSHOT_VERSION: u16 = 2;
/// Oldest snapshot format version this build restores.
pub const OLDEST_SNAPSHOT_VERSION: u16 = 1;
/// Header of a snapshot before the generations.
const HEADER_BYTES: usize = 8 + 2 + 2 + 16 + 8 + 8 + 8 + 4 + 4 + 8 + 8 + 4;
/// Header and checksum of one snapshot part.
pub const PART_OVERHEAD_BYTES: usize = 8 + 2 + 2 + 4 + 8 + 4 + 4 + 4 + 4;

/// Errors of settings validation and snapshot decoding.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DedupError {
    /// A setting is out of range.
    #[error("invalid dedup setting {field}: {reason}")]
    InvalidSettings {
        /// The setting's name, as in the config file.
        field: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The bytes are not a dedup snapshot (or part).
    #[error("not a dedup snapshot: bad magic bytes")]
    BadMagic,
    /// A snapshot written by a format this build does not read.
    #[error(
        "dedup snapshot format version {found} is not supported (this build reads 1 to {supported})"
    )]
    UnsupportedVersion {
        /// Version found in the snapshot.
        found: u16,
        /// Newest version this build reads (it reads from [`OLDEST_SNAPSHOT_VERSION`]).
        supported: u16,
    },
    /// The snapshot is shorter or longer than its header says.
    #[error("dedup snapshot has {found} bytes, its header implies {expected}")]
    Length {
        /// Length implied by the header.
        expected: u64,
        /// Actual length.
        found: u64,
    },
    /// The checksum does not match: the snapshot was damaged.
    #[error("dedup snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Checksum stored in the snapshot.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// The header holds values no writer produces.
    #[error("dedup snapshot header is inconsistent: {0}")]
    Inconsistent(String),
    /// The parts given do not form one complete snapshot.
    #[error("dedup snapshot parts do not form one snapshot: {0}")]
    Parts(String),
}

/// What the operator configures for one stream's filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupSettings {
    /// `override_bloom_filter_size`: how many record ids the filter must remember at least.
    pub expected_items: u64,
    /// `override_bloom_filter_buffer_size`: ids per generation; when the newest generation holds
    /// this many, a new one starts and the oldest beyond the plan's count is dropped.
    pub generation_items: u64,
    /// Allowed expected number of wrongly dropped records over `expected_items` fresh ids.
    pub max_expected_false_drops: f64,
}

impl Default for DedupSettings {
    fn default() -> Self {
        DedupSettings::from_overrides(None, None)
    }
}

impl DedupSettings {
    /// Settings from Devo's per-service options; a missing buffer size is a quarter of the
    /// filter size (rounded up), a missing filter size is [`DEFAULT_EXPECTED_ITEMS`].
    pub fn from_overrides(bloom_filter_size: Option<u64>, buffer_size: Option<u64>) -> Self {
        let expected_items = bloom_filter_size.unwrap_or(DEFAULT_EXPECTED_ITEMS);
        DedupSettings {
            expected_items,
            generation_items: buffer_size.unwrap_or(expected_items.div_ceil(4).max(1)),
            max_expected_false_drops: DEFAULT_MAX_EXPECTED_FALSE_DROPS,
        }
    }

    /// Checks ranges and the resulting memory; for `check-config`.
    pub fn validate(&self) -> Result<(), DedupError> {
        let invalid = |field, reason: String| Err(DedupError::InvalidSettings { field, reason });
        if !(1..=MAX_ITEMS).contains(&self.expected_items) {
            return invalid(
                "override_bloom_filter_size",
                format!("{} is outside 1..={MAX_ITEMS}", self.expected_items),
            );
        }
        if !(1..=MAX_ITEMS).contains(&self.generation_items) {
            return invalid(
                "override_bloom_filter_buffer_size",
                format!("{} is outside 1..={MAX_ITEMS}", self.generation_items),
            );
        }
        let d = self.max_expected_false_drops;
        if !(d.is_finite() && d > 0.0 && d <= 1.0) {
            return invalid("max_expected_false_drops", format!("{d} is outside (0, 1]"));
        }
        let plan = self.plan();
        if plan.memory_bytes > MAX_MEMORY_BYTES {
            return invalid(
                "override_bloom_filter_size",
                format!(
                    "the filter would need {} bytes (more than {MAX_MEMORY_BYTES}); lower \
                     override_bloom_filter_size or raise override_bloom_filter_buffer_size",
                    plan.memory_bytes
                ),
            );
        }
        Ok(())
    }

    /// Nonsense values replaced (what [`Dedup::new`] uses): item counts clamped to
    /// `1..=MAX_ITEMS`, a non-finite or non-positive false-drop target set to the default.
    /// Looser than [`DedupSettings::validate`], which also caps the target at 1 and the memory.
    fn clamped(&self) -> DedupSettings {
        let d = self.max_expected_false_drops;
        DedupSettings {
            expected_items: self.expected_items.clamp(1, MAX_ITEMS),
            generation_items: self.generation_items.clamp(1, MAX_ITEMS),
            max_expected_false_drops: if d.is_finite() && d > 0.0 {
                d
            } else {
                DEFAULT_MAX_EXPECTED_FALSE_DROPS
            },
        }
    }

    /// The filter geometry these settings give (see the module docs for the formulas).
    pub fn plan(&self) -> BloomPlan {
        let s = self.clamped();
        let n = s.expected_items;
        let c = s.generation_items;
        let generations = n.div_ceil(c) + 1;
        let target_p = s.max_expected_false_drops / (n as f64 * generations as f64);
        let ln2 = std::f64::consts::LN_2;
        let mut bits = (-(c as f64) * target_p.ln() / (ln2 * ln2)).ceil().max(64.0) as u64;
        bits = bits.div_ceil(64) * 64;
        loop {
            let plan = BloomPlan::with(n, c, generations, bits);
            if plan.expected_false_drops < s.max_expected_false_drops {
                return plan;
            }
            bits = (bits + bits / 100 + 64).div_ceil(64) * 64;
        }
    }
}

/// Geometry of a filter and what it promises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BloomPlan {
    /// Generations kept (`G`), the newest included.
    pub generations: u32,
    /// Ids per generation (`c`).
    pub generation_items: u64,
    /// Bits per generation (`m`), a multiple of 64.
    pub bits_per_generation: u64,
    /// Hash functions (`k`).
    pub hashes: u32,
    /// False-positive probability of one full generation.
    pub false_positive_per_generation: f64,
    /// False-positive probability of one lookup across `G` full generations.
    pub false_positive_per_lookup: f64,
    /// Expected wrongly dropped records over `expected_items` fresh ids.
    pub expected_false_drops: f64,
    /// Memory of all generations' bits, in bytes.
    pub memory_bytes: u64,
    /// Ids always remembered: the last `(G-1)·c` inserted.
    pub horizon_min_items: u64,
    /// No id is remembered after `G·c` further insertions.
    pub horizon_max_items: u64,
}

impl BloomPlan {
    fn with(n: u64, c: u64, generations: u64, bits: u64) -> BloomPlan {
        let ratio = bits as f64 / c as f64;
        let hashes = ((ratio * std::f64::consts::LN_2).round() as u32).clamp(1, MAX_HASHES);
        BloomPlan::from_geometry(n, c, generations as u32, bits, hashes)
    }

    fn from_geometry(n: u64, c: u64, generations: u32, bits: u64, hashes: u32) -> BloomPlan {
        let k = f64::from(hashes);
        let p = (1.0 - (-k * c as f64 / bits as f64).exp()).powf(k);
        // 1 - (1 - p)^G computed without cancellation for tiny p.
        let per_lookup = -(f64::from(generations) * (-p).ln_1p()).exp_m1();
        BloomPlan {
            generations,
            generation_items: c,
            bits_per_generation: bits,
            hashes,
            false_positive_per_generation: p,
            false_positive_per_lookup: per_lookup,
            expected_false_drops: n as f64 * per_lookup,
            memory_bytes: u64::from(generations) * bits / 8,
            horizon_min_items: u64::from(generations - 1) * c,
            horizon_max_items: u64::from(generations) * c,
        }
    }
}

/// One generation: a plain bloom filter of `m` bits.
#[derive(Clone, PartialEq, Eq)]
struct Generation {
    words: Vec<u64>,
    items: u64,
}

impl Generation {
    fn new(bits: u64) -> Generation {
        Generation {
            words: vec![0; (bits / 64) as usize],
            items: 0,
        }
    }

    fn contains(&self, probes: &[u64]) -> bool {
        probes
            .iter()
            .all(|&bit| self.words[(bit >> 6) as usize] & (1 << (bit & 63)) != 0)
    }

    fn insert(&mut self, probes: &[u64]) {
        for &bit in probes {
            self.words[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
        self.items += 1;
    }
}

/// The dedup filter of one stream. Owned by the consumer task that handles the stream's
/// partition; persisted through [`Dedup::to_snapshot_parts`].
#[derive(Clone)]
pub struct Dedup {
    settings: DedupSettings,
    plan: BloomPlan,
    seed: u128,
    hasher: SipHasher13,
    /// How bit positions are derived: the snapshot format version that introduced the scheme.
    scheme: u16,
    /// Oldest first; the last one takes insertions. Never empty.
    generations: VecDeque<Generation>,
    /// Ids inserted since the filter was created (across restores).
    inserted_total: u64,
}

impl fmt::Debug for Dedup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The seed is left out: it is the hash key.
        f.debug_struct("Dedup")
            .field("settings", &self.settings)
            .field("plan", &self.plan)
            .field("generations", &self.generations.len())
            .field("len", &self.len())
            .field("inserted_total", &self.inserted_total)
            .finish_non_exhaustive()
    }
}

impl Dedup {
    /// An empty filter with a fresh random seed. Out-of-range settings are clamped; call
    /// [`DedupSettings::validate`] first to report them.
    pub fn new(settings: DedupSettings) -> Self {
        Dedup::with_seed(settings, rand::random())
    }

    /// An empty filter with the given seed (tests and reproducible tools).
    pub fn with_seed(settings: DedupSettings, seed: u128) -> Self {
        let settings = settings.clamped();
        let plan = settings.plan();
        let mut generations = VecDeque::with_capacity(plan.generations as usize + 1);
        generations.push_back(Generation::new(plan.bits_per_generation));
        Dedup {
            settings,
            plan,
            seed,
            hasher: hasher_for(seed),
            scheme: SNAPSHOT_VERSION,
            generations,
            inserted_total: 0,
        }
    }

    /// Records `id` and says whether it is new: `true` the first time, `false` when the id (or,
    /// with the planned tiny probability, a colliding one) was already seen within the horizon.
    /// A seen id is not inserted again, so its horizon runs from its first insertion.
    pub fn check_and_insert(&mut self, id: &str) -> bool {
        let mut buf = [0u64; MAX_HASHES as usize];
        let probes = self.probes(id, &mut buf);
        if self.generations.iter().rev().any(|g| g.contains(probes)) {
            return false;
        }
        let full = self
            .generations
            .back()
            .is_none_or(|g| g.items >= self.plan.generation_items);
        if full {
            self.generations
                .push_back(Generation::new(self.plan.bits_per_generation));
            while self.generations.len() > self.plan.generations as usize {
                self.generations.pop_front();
            }
        }
        if let Some(current) = self.generations.back_mut() {
            current.insert(probes);
        }
        self.inserted_total += 1;
        true
    }

    /// Whether `id` was seen within the horizon (false positives as planned), without
    /// recording it.
    pub fn contains(&self, id: &str) -> bool {
        let mut buf = [0u64; MAX_HASHES as usize];
        let probes = self.probes(id, &mut buf);
        self.generations.iter().rev().any(|g| g.contains(probes))
    }

    /// Ids held by the live generations.
    pub fn len(&self) -> u64 {
        self.generations.iter().map(|g| g.items).sum()
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids inserted over the filter's whole life, restores included.
    pub fn inserted_total(&self) -> u64 {
        self.inserted_total
    }

    /// Bytes of filter bits held now; reaches [`BloomPlan::memory_bytes`] once all
    /// generations exist and stays there.
    pub fn memory_bytes(&self) -> usize {
        self.generations.iter().map(|g| g.words.len() * 8).sum()
    }

    /// Live generations (1 ..= [`BloomPlan::generations`]).
    pub fn generation_count(&self) -> usize {
        self.generations.len()
    }

    /// The settings the filter runs with (after a restore: those it was saved with).
    pub fn settings(&self) -> DedupSettings {
        self.settings
    }

    /// The geometry the filter runs with.
    pub fn plan(&self) -> BloomPlan {
        self.plan
    }

    /// The 128-bit hash key; persisted in snapshots. Do not log it.
    pub fn seed(&self) -> u128 {
        self.seed
    }

    /// The snapshot format version this filter writes: [`SNAPSHOT_VERSION`], or 1 for a filter
    /// restored from a version 1 snapshot (its positions are derived the old way).
    pub fn format_version(&self) -> u16 {
        self.scheme
    }

    /// Bit positions of `id`, each mapped to `0..m` by multiply-shift (scheme in the module docs).
    fn probes<'b>(&self, id: &str, buf: &'b mut [u64; MAX_HASHES as usize]) -> &'b [u64] {
        let h = self.hasher.hash(id.as_bytes());
        let m = u128::from(self.plan.bits_per_generation);
        let k = self.plan.hashes as usize;
        let position = |x: u64| ((u128::from(x) * m) >> 64) as u64;
        if self.scheme == 1 {
            let (mut a, mut b) = (h.h1, h.h2);
            for (i, slot) in buf.iter_mut().take(k).enumerate() {
                *slot = position(a);
                a = a.wrapping_add(b);
                b = b.wrapping_add(i as u64 + 1);
            }
        } else {
            for (i, slot) in buf.iter_mut().take(k).enumerate() {
                *slot =
                    position(mix64(h.h1.wrapping_add(GOLDEN.wrapping_mul(i as u64 + 1))) ^ h.h2);
            }
        }
        &buf[..k]
    }

    /// The whole filter as one versioned, checksummed snapshot (format in the module docs).
    pub fn to_snapshot(&self) -> Vec<u8> {
        let words_per_gen = (self.plan.bits_per_generation / 64) as usize;
        let mut out =
            Vec::with_capacity(HEADER_BYTES + self.generations.len() * (8 + words_per_gen * 8) + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.scheme.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        out.extend_from_slice(&self.settings.expected_items.to_le_bytes());
        out.extend_from_slice(&self.settings.generation_items.to_le_bytes());
        out.extend_from_slice(&self.settings.max_expected_false_drops.to_le_bytes());
        out.extend_from_slice(&self.plan.generations.to_le_bytes());
        out.extend_from_slice(&self.plan.hashes.to_le_bytes());
        out.extend_from_slice(&self.plan.bits_per_generation.to_le_bytes());
        out.extend_from_slice(&self.inserted_total.to_le_bytes());
        out.extend_from_slice(&(self.generations.len() as u32).to_le_bytes());
        for g in &self.generations {
            out.extend_from_slice(&g.items.to_le_bytes());
            for w in &g.words {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Restores a filter from [`Dedup::to_snapshot`] bytes; refuses damaged or foreign input.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, DedupError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(DedupError::BadMagic);
        }
        let mut r = Reader::new(bytes);
        r.skip(MAGIC.len())?;
        let version = r.u16()?;
        if !(OLDEST_SNAPSHOT_VERSION..=SNAPSHOT_VERSION).contains(&version) {
            return Err(DedupError::UnsupportedVersion {
                found: version,
                supported: SNAPSHOT_VERSION,
            });
        }
        if bytes.len() < HEADER_BYTES + 4 {
            return Err(DedupError::Length {
                expected: (HEADER_BYTES + 4) as u64,
                found: bytes.len() as u64,
            });
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(DedupError::Checksum { stored, computed });
        }
        let _reserved = r.u16()?;
        let seed = u128::from_le_bytes(r.array::<16>()?);
        let settings = DedupSettings {
            expected_items: r.u64()?,
            generation_items: r.u64()?,
            max_expected_false_drops: f64::from_le_bytes(r.array::<8>()?),
        };
        let generations_max = r.u32()?;
        let hashes = r.u32()?;
        let bits = r.u64()?;
        let inserted_total = r.u64()?;
        let count = r.u32()?;

        let bad = |what: String| Err(DedupError::Inconsistent(what));
        if settings.clamped() != settings {
            return bad(format!("settings out of range: {settings:?}"));
        }
        if generations_max < 2 {
            return bad(format!("{generations_max} generations"));
        }
        if !(1..=MAX_HASHES).contains(&hashes) {
            return bad(format!("{hashes} hash functions"));
        }
        if bits == 0 || bits % 64 != 0 || bits / 8 > MAX_MEMORY_BYTES {
            return bad(format!("{bits} bits per generation"));
        }
        if count == 0 || count > generations_max {
            return bad(format!(
                "{count} generations stored, at most {generations_max} kept"
            ));
        }
        let words = (bits / 64) as usize;
        let expected = HEADER_BYTES as u64 + u64::from(count) * (8 + bits / 8) + 4;
        if bytes.len() as u64 != expected {
            return Err(DedupError::Length {
                expected,
                found: bytes.len() as u64,
            });
        }
        let mut generations = VecDeque::with_capacity(generations_max as usize + 1);
        for _ in 0..count {
            let items = r.u64()?;
            if items > settings.generation_items {
                return bad(format!(
                    "a generation holds {items} ids, more than {}",
                    settings.generation_items
                ));
            }
            let raw = r.take(words * 8)?;
            let words = raw
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
                .collect();
            generations.push_back(Generation { words, items });
        }
        let plan = BloomPlan::from_geometry(
            settings.expected_items,
            settings.generation_items,
            generations_max,
            bits,
            hashes,
        );
        Ok(Dedup {
            settings,
            plan,
            seed,
            hasher: hasher_for(seed),
            scheme: version,
            generations,
            inserted_total,
        })
    }

    /// The snapshot cut into numbered parts of at most `max_part_bytes` each (at least
    /// [`PART_OVERHEAD_BYTES`] + 1), for stores with a per-value size limit. Each part carries
    /// its index, the part count, the snapshot's length and checksum, and its own checksum.
    pub fn to_snapshot_parts(&self, max_part_bytes: usize) -> Vec<Vec<u8>> {
        let snapshot = self.to_snapshot();
        let payload_max = max_part_bytes.saturating_sub(PART_OVERHEAD_BYTES).max(1);
        // The snapshot's own checksum identifies it (a CRC over data plus its CRC would be a
        // constant, so the stored one is used rather than a CRC of the whole).
        let whole_crc = snapshot_crc(&snapshot);
        let count = snapshot.len().div_ceil(payload_max) as u32;
        snapshot
            .chunks(payload_max)
            .enumerate()
            .map(|(index, payload)| {
                let mut part = Vec::with_capacity(payload.len() + PART_OVERHEAD_BYTES);
                part.extend_from_slice(PART_MAGIC);
                part.extend_from_slice(&self.scheme.to_le_bytes());
                part.extend_from_slice(&0u16.to_le_bytes());
                part.extend_from_slice(&whole_crc.to_le_bytes());
                part.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
                part.extend_from_slice(&(index as u32).to_le_bytes());
                part.extend_from_slice(&count.to_le_bytes());
                part.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                part.extend_from_slice(payload);
                let crc = crc32fast::hash(&part);
                part.extend_from_slice(&crc.to_le_bytes());
                part
            })
            .collect()
    }

    /// Joins parts from [`Dedup::to_snapshot_parts`] (in any order) and restores the filter.
    /// Refuses a missing, repeated, damaged or foreign part.
    pub fn from_snapshot_parts<P: AsRef<[u8]>>(parts: &[P]) -> Result<Self, DedupError> {
        let first = parts
            .first()
            .ok_or_else(|| DedupError::Parts("no parts given".into()))?;
        let head = PartHeader::read(first.as_ref())?;
        if parts.len() != head.count as usize {
            return Err(DedupError::Parts(format!(
                "{} parts given, the snapshot has {}",
                parts.len(),
                head.count
            )));
        }
        let mut slots: Vec<Option<&[u8]>> = vec![None; head.count as usize];
        for part in parts {
            let h = PartHeader::read(part.as_ref())?;
            if (h.whole_crc, h.total_len, h.count) != (head.whole_crc, head.total_len, head.count) {
                return Err(DedupError::Parts(
                    "parts belong to different snapshots".into(),
                ));
            }
            let slot = slots
                .get_mut(h.index as usize)
                .ok_or_else(|| DedupError::Parts(format!("part index {} out of range", h.index)))?;
            if slot.replace(h.payload).is_some() {
                return Err(DedupError::Parts(format!("part {} given twice", h.index)));
            }
        }
        let mut snapshot = Vec::with_capacity(head.total_len.min(MAX_MEMORY_BYTES) as usize);
        for (index, slot) in slots.iter().enumerate() {
            let payload =
                slot.ok_or_else(|| DedupError::Parts(format!("part {index} is missing")))?;
            snapshot.extend_from_slice(payload);
        }
        if snapshot.len() as u64 != head.total_len || snapshot_crc(&snapshot) != head.whole_crc {
            return Err(DedupError::Parts(
                "joined parts do not match the snapshot's length and checksum".into(),
            ));
        }
        Dedup::from_snapshot(&snapshot)
    }
}

/// The checksum stored at the end of a snapshot (0 for input too short to have one).
fn snapshot_crc(snapshot: &[u8]) -> u32 {
    match snapshot.len().checked_sub(4) {
        Some(at) => {
            let t = &snapshot[at..];
            u32::from_le_bytes([t[0], t[1], t[2], t[3]])
        }
        None => 0,
    }
}

/// 2^64 / φ, the SplitMix64 increment.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finaliser: a bijection on u64 whose output bits each depend on every input bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hasher_for(seed: u128) -> SipHasher13 {
    SipHasher13::new_with_keys(seed as u64, (seed >> 64) as u64)
}

/// The decoded header of one snapshot part.
struct PartHeader<'a> {
    whole_crc: u32,
    total_len: u64,
    index: u32,
    count: u32,
    payload: &'a [u8],
}

impl<'a> PartHeader<'a> {
    fn read(bytes: &'a [u8]) -> Result<Self, DedupError> {
        if bytes.len() < PART_MAGIC.len() || &bytes[..PART_MAGIC.len()] != PART_MAGIC {
            return Err(DedupError::BadMagic);
        }
        let mut r = Reader::new(bytes);
        r.skip(PART_MAGIC.len())?;
        let version = r.u16()?;
        if !(OLDEST_SNAPSHOT_VERSION..=SNAPSHOT_VERSION).contains(&version) {
            return Err(DedupError::UnsupportedVersion {
                found: version,
                supported: SNAPSHOT_VERSION,
            });
        }
        if bytes.len() < PART_OVERHEAD_BYTES {
            return Err(DedupError::Length {
                expected: PART_OVERHEAD_BYTES as u64,
                found: bytes.len() as u64,
            });
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(DedupError::Checksum { stored, computed });
        }
        let _reserved = r.u16()?;
        let whole_crc = r.u32()?;
        let total_len = r.u64()?;
        let index = r.u32()?;
        let count = r.u32()?;
        let len = r.u32()? as usize;
        if bytes.len() != PART_OVERHEAD_BYTES + len {
            return Err(DedupError::Length {
                expected: (PART_OVERHEAD_BYTES + len) as u64,
                found: bytes.len() as u64,
            });
        }
        let payload = r.take(len)?;
        Ok(PartHeader {
            whole_crc,
            total_len,
            index,
            count,
            payload,
        })
    }
}

/// Little-endian reader over a byte slice whose overall length was already checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DedupError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or(DedupError::Length {
            expected: (self.at + n) as u64,
            found: self.bytes.len() as u64,
        })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn skip(&mut self, n: usize) -> Result<(), DedupError> {
        self.take(n).map(|_| ())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DedupError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16, DedupError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, DedupError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DedupError> {
        self.array().map(u64::from_le_bytes)
    }
}
