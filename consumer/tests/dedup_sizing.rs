//! The sizing maths: the defaults give the documented geometry, every plan meets its
//! false-drop target, and out-of-range settings are refused by `validate`.

use m365_consumer::dedup::{DedupError, DedupSettings};

// Proves the defaults (1,000,000 ids, 250,000 per generation, 0.001 expected false drops)
// give the numbers written in the module docs.
#[test]
fn default_plan_matches_the_docs() {
    let s = DedupSettings::default();
    assert_eq!((s.expected_items, s.generation_items), (1_000_000, 250_000));
    let plan = s.plan();
    println!("{plan:#?}");
    assert_eq!(plan.generations, 5);
    assert_eq!(plan.hashes, 33);
    assert_eq!(plan.bits_per_generation, 11_736_960);
    assert_eq!(plan.memory_bytes, 7_335_600);
    assert_eq!(plan.horizon_min_items, 1_000_000);
    assert!(
        plan.expected_false_drops < 0.001,
        "{}",
        plan.expected_false_drops
    );
    assert!(plan.false_positive_per_generation <= 2.0e-10);
    assert!(plan.expected_false_drops > 0.0005, "not grossly oversized");
}

// Proves every plan over a range of settings promises fewer expected false drops than its
// target, remembers at least expected_items ids, and uses whole 64-bit words.
#[test]
fn every_plan_meets_its_target() {
    for expected in [1, 7, 1_000, 123_457, 1_000_000, 10_000_000] {
        for per_gen in [1, 3, 1_000, 250_000, 2_000_000] {
            for target in [0.001, 1e-6, 0.5] {
                let s = DedupSettings {
                    expected_items: expected,
                    generation_items: per_gen,
                    max_expected_false_drops: target,
                };
                let plan = s.plan();
                assert!(plan.expected_false_drops < target, "{s:?} {plan:?}");
                assert!(plan.horizon_min_items >= expected, "{s:?} {plan:?}");
                assert_eq!(plan.bits_per_generation % 64, 0);
                assert!(plan.hashes >= 1);
            }
        }
    }
}

// Proves Devo's option names map onto the settings, with the documented default buffer size.
#[test]
fn settings_from_devo_overrides() {
    let s = DedupSettings::from_overrides(Some(400_000), None);
    assert_eq!((s.expected_items, s.generation_items), (400_000, 100_000));
    let s = DedupSettings::from_overrides(Some(400_000), Some(50_000));
    assert_eq!(s.plan().generations, 9);
}

// Proves out-of-range settings are refused with the config key named.
#[test]
fn validate_refuses_out_of_range_settings() {
    assert!(DedupSettings::default().validate().is_ok());
    let zero = DedupSettings::from_overrides(Some(0), Some(1));
    assert!(matches!(
        zero.validate(),
        Err(DedupError::InvalidSettings {
            field: "override_bloom_filter_size",
            ..
        })
    ));
    let zero_buf = DedupSettings::from_overrides(Some(10), Some(0));
    let err = zero_buf.validate().unwrap_err();
    assert!(
        err.to_string()
            .contains("override_bloom_filter_buffer_size"),
        "{err}"
    );
    let huge = DedupSettings::from_overrides(Some(1_000_000_000), None);
    let err = huge.validate().unwrap_err();
    assert!(err.to_string().contains("bytes"), "{err}");
    let nan = DedupSettings {
        max_expected_false_drops: f64::NAN,
        ..DedupSettings::default()
    };
    assert!(nan.validate().is_err());
}
