//! Dedup snapshots: a round trip (whole or in parts) preserves every answer, the seed and the
//! parameters; damaged, foreign, incomplete or future-version input is refused clearly.

use m365_consumer::dedup::{
    Dedup, DedupError, DedupSettings, PART_OVERHEAD_BYTES, SNAPSHOT_VERSION,
};

fn id(n: u64) -> String {
    format!("rec-{n:016x}")
}

/// A filter that has rotated a few times, so several generations are stored.
fn filled() -> Dedup {
    let s = DedupSettings {
        expected_items: 3_000,
        generation_items: 1_000,
        max_expected_false_drops: 0.001,
    };
    let mut dedup = Dedup::new(s);
    for n in 0..5_500 {
        dedup.check_and_insert(&id(n));
    }
    assert_eq!(dedup.generation_count(), 4);
    dedup
}

/// Every answer of `a` and `b` agrees on seen ids, forgotten ids and fresh ids.
fn same_answers(a: &Dedup, b: &Dedup) {
    for n in 0..20_000 {
        assert_eq!(a.contains(&id(n)), b.contains(&id(n)), "id {n}");
    }
}

// Proves a snapshot round trip keeps the seed, parameters, counters and every answer, and
// the restored filter goes on deduplicating (and rotating) like the original.
#[test]
fn snapshot_round_trip_preserves_answers_and_seed() {
    let mut original = filled();
    let bytes = original.to_snapshot();
    let mut restored = Dedup::from_snapshot(&bytes).unwrap();
    assert_eq!(restored.seed(), original.seed());
    assert_eq!(restored.settings(), original.settings());
    assert_eq!(restored.plan(), original.plan());
    assert_eq!(restored.len(), original.len());
    assert_eq!(restored.inserted_total(), original.inserted_total());
    assert_eq!(restored.memory_bytes(), original.memory_bytes());
    same_answers(&original, &restored);
    for n in 5_000..7_000 {
        assert_eq!(
            restored.check_and_insert(&id(n)),
            original.check_and_insert(&id(n))
        );
    }
    same_answers(&original, &restored);
    assert_eq!(restored.to_snapshot(), original.to_snapshot());
}

// Proves a fresh filter (one empty generation) round-trips too.
#[test]
fn empty_filter_round_trips() {
    let dedup = Dedup::new(DedupSettings::from_overrides(Some(10), Some(5)));
    let restored = Dedup::from_snapshot(&dedup.to_snapshot()).unwrap();
    assert!(restored.is_empty());
    assert_eq!(restored.seed(), dedup.seed());
}

// Proves parts respect the size limit, can be joined in any order, and give the same filter.
#[test]
fn snapshot_parts_round_trip_in_any_order() {
    let original = filled();
    let whole = original.to_snapshot();
    let parts = original.to_snapshot_parts(4_096);
    assert!(parts.len() > 1);
    assert!(parts.iter().all(|p| p.len() <= 4_096));
    let total: usize = parts.iter().map(|p| p.len() - PART_OVERHEAD_BYTES).sum();
    assert_eq!(total, whole.len());
    let mut shuffled = parts.clone();
    shuffled.reverse();
    shuffled.swap(0, 1);
    let restored = Dedup::from_snapshot_parts(&shuffled).unwrap();
    same_answers(&original, &restored);
    assert_eq!(restored.to_snapshot(), whole);
    // One part when the limit is large.
    assert_eq!(original.to_snapshot_parts(usize::MAX).len(), 1);
}

// Proves the default-sized filter's snapshot fits in ~900 KB parts (one Kafka message each).
#[test]
fn default_snapshot_splits_into_kafka_sized_parts() {
    let dedup = Dedup::new(DedupSettings::default());
    let parts = dedup.to_snapshot_parts(900 * 1024);
    assert!(parts.iter().all(|p| p.len() <= 900 * 1024));
    let restored = Dedup::from_snapshot_parts(&parts).unwrap();
    assert_eq!(restored.plan(), dedup.plan());
}

// Proves a snapshot written by format version 1 (the fixture was written by that build: 1,200
// ids, seed fixed) is still restored, remembers every id, keeps deriving positions the old way
// (re-snapshotting gives the same bytes) and goes on deduplicating; new filters write version 2.
#[test]
fn version_1_snapshot_is_restored_with_its_scheme() {
    let fixture = include_bytes!("fixtures/dedup-v1.bin");
    let mut restored = Dedup::from_snapshot(fixture).unwrap();
    assert_eq!(restored.format_version(), 1);
    let v1_id = |n: u64| {
        format!(
            "{:08x}-{:04x}-4{:03x}-8000-{:012x}",
            n as u32,
            (n >> 32) as u16,
            n % 4096,
            n
        )
    };
    for n in 0..1_200 {
        assert!(restored.contains(&v1_id(n)), "id {n} forgotten");
    }
    assert_eq!(restored.to_snapshot(), fixture.to_vec());
    let parts = restored.to_snapshot_parts(2_048);
    assert_eq!(
        Dedup::from_snapshot_parts(&parts).unwrap().format_version(),
        1
    );
    assert!(!restored.check_and_insert(&v1_id(7)));
    assert!(restored.check_and_insert("a fresh id"));
    assert!(restored.contains("a fresh id"));
    assert_eq!(filled().format_version(), SNAPSHOT_VERSION);
    assert_eq!(filled().to_snapshot()[8], SNAPSHOT_VERSION as u8);
}

// Proves a flipped bit anywhere, a wrong version, a foreign blob and a cut snapshot are
// refused with the matching error.
#[test]
fn corrupted_snapshots_are_refused() {
    let bytes = filled().to_snapshot();
    for at in [20, 40, 70, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        let err = Dedup::from_snapshot(&bad).unwrap_err();
        assert!(
            matches!(err, DedupError::Checksum { .. }),
            "byte {at}: {err}"
        );
        assert!(err.to_string().contains("checksum"));
    }
    let mut future = bytes.clone();
    future[8] = 3;
    let err = Dedup::from_snapshot(&future).unwrap_err();
    assert_eq!(
        err,
        DedupError::UnsupportedVersion {
            found: 3,
            supported: SNAPSHOT_VERSION
        }
    );
    assert!(err.to_string().contains("version 3"));
    let mut ancient = bytes.clone();
    ancient[8] = 0;
    assert!(matches!(
        Dedup::from_snapshot(&ancient).unwrap_err(),
        DedupError::UnsupportedVersion { found: 0, .. }
    ));
    assert_eq!(
        Dedup::from_snapshot(b"{\"json\":true}").unwrap_err(),
        DedupError::BadMagic
    );
    assert_eq!(Dedup::from_snapshot(b"").unwrap_err(), DedupError::BadMagic);
    assert!(matches!(
        Dedup::from_snapshot(&bytes[..bytes.len() - 9]).unwrap_err(),
        DedupError::Checksum { .. } | DedupError::Length { .. }
    ));
    assert!(matches!(
        Dedup::from_snapshot(&bytes[..30]).unwrap_err(),
        DedupError::Length { .. }
    ));
}

// Proves a missing, repeated, damaged or foreign part is refused.
#[test]
fn bad_part_sets_are_refused() {
    let a = filled();
    let parts = a.to_snapshot_parts(8_192);
    assert!(parts.len() >= 3);
    let missing: Vec<_> = parts[1..].to_vec();
    assert!(matches!(
        Dedup::from_snapshot_parts(&missing),
        Err(DedupError::Parts(_))
    ));
    let mut repeated = parts.clone();
    repeated[1] = parts[0].clone();
    let err = Dedup::from_snapshot_parts(&repeated).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    let mut damaged = parts.clone();
    damaged[1][100] ^= 1;
    assert!(matches!(
        Dedup::from_snapshot_parts(&damaged),
        Err(DedupError::Checksum { .. })
    ));
    let other = filled().to_snapshot_parts(8_192);
    let mut mixed = parts.clone();
    mixed[0] = other[0].clone();
    let err = Dedup::from_snapshot_parts(&mixed).unwrap_err();
    assert!(err.to_string().contains("different snapshots"), "{err}");
    assert!(matches!(
        Dedup::from_snapshot_parts::<Vec<u8>>(&[]),
        Err(DedupError::Parts(_))
    ));
    // A whole snapshot is not a part.
    assert_eq!(
        Dedup::from_snapshot_parts(&[a.to_snapshot()]).unwrap_err(),
        DedupError::BadMagic
    );
}
