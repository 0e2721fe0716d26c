//! The chaos plan: which fault each trial injects, when it starts and how long it lasts,
//! all drawn from one seed so a run can be repeated exactly.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// One kind of fault with its recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL the producer, restart it after the hold.
    KillProducer,
    /// SIGKILL the consumer (with its uri_retry service), restart it after the hold.
    KillConsumer,
    /// SIGKILL the forwarder, restart it after the hold.
    KillForwarder,
    /// The fake Devo stops listening (connections dropped) for the hold, then resumes.
    DevoOutage,
    /// SIGKILL the broker, restart it on the same port and storage after the hold.
    BrokerRestart,
    /// The API answers most requests AF429 for the hold.
    ApiThrottle,
    /// The API answers most requests 500 AF50000 for the hold.
    Api500,
    /// Every access token issued so far expires at once (401 until refreshed).
    TokenExpiry,
    /// The next listed blob expires before it can be downloaded (a gap the pipeline must
    /// report, not hide).
    BlobExpiry,
}

impl FaultKind {
    /// Every kind, in table order.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::KillProducer,
        FaultKind::KillConsumer,
        FaultKind::KillForwarder,
        FaultKind::DevoOutage,
        FaultKind::BrokerRestart,
        FaultKind::ApiThrottle,
        FaultKind::Api500,
        FaultKind::TokenExpiry,
        FaultKind::BlobExpiry,
    ];

    /// Short description for the trial log and the table.
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::KillProducer => "SIGKILL + restart producer",
            FaultKind::KillConsumer => "SIGKILL + restart consumer",
            FaultKind::KillForwarder => "SIGKILL + restart forwarder",
            FaultKind::DevoOutage => "fake Devo not listening",
            FaultKind::BrokerRestart => "broker SIGKILL + restart",
            FaultKind::ApiThrottle => "API burst of AF429",
            FaultKind::Api500 => "API burst of 500 AF50000",
            FaultKind::TokenExpiry => "access tokens expire",
            FaultKind::BlobExpiry => "listed blob expires before download",
        }
    }

    /// How long the fault lasts (before the restart / resume / end of the burst).
    fn hold(self, rng: &mut StdRng) -> Duration {
        let ms = match self {
            FaultKind::KillProducer | FaultKind::KillConsumer | FaultKind::KillForwarder => {
                rng.random_range(300..4_000)
            }
            FaultKind::DevoOutage => rng.random_range(2_000..10_000),
            FaultKind::BrokerRestart => rng.random_range(500..5_000),
            FaultKind::ApiThrottle | FaultKind::Api500 => rng.random_range(2_000..8_000),
            FaultKind::TokenExpiry | FaultKind::BlobExpiry => 0,
        };
        Duration::from_millis(ms)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One planned trial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trial {
    /// 1-based number.
    pub number: usize,
    /// Start, counted from the start of the trials.
    pub at: Duration,
    /// The fault.
    pub kind: FaultKind,
    /// How long the fault lasts before its recovery.
    pub hold: Duration,
}

/// The trials of a run: the first ones cover every kind once (in a seeded order), the rest
/// are drawn at random; each starts 1.5–6 s after the previous one, so a long fault may
/// still be in progress when the next begins (faults overlap a little). Two faults on the
/// same component never overlap: the driver runs them one after the other.
pub fn plan(seed: u64, trials: usize) -> Vec<Trial> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds = FaultKind::ALL.to_vec();
    kinds.shuffle(&mut rng);
    let mut out = Vec::with_capacity(trials);
    let mut at = Duration::from_secs(2);
    for number in 1..=trials {
        let kind = match kinds.get(number - 1) {
            Some(&k) => k,
            None => FaultKind::ALL[rng.random_range(0..FaultKind::ALL.len())],
        };
        let hold = kind.hold(&mut rng);
        out.push(Trial {
            number,
            at,
            kind,
            hold,
        });
        at += Duration::from_millis(rng.random_range(1_500..6_000));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a plan is a pure function of its seed.
    #[test]
    fn same_seed_same_plan() {
        assert_eq!(plan(7, 30), plan(7, 30));
        assert_ne!(plan(7, 30), plan(8, 30));
    }

    // Proves the first trials cover every fault kind and starts only move forward.
    #[test]
    fn first_trials_cover_every_kind() {
        let p = plan(3, FaultKind::ALL.len() + 5);
        let mut first: Vec<FaultKind> = p[..FaultKind::ALL.len()].iter().map(|t| t.kind).collect();
        first.sort();
        assert_eq!(first, FaultKind::ALL.to_vec());
        assert!(p.windows(2).all(|w| w[0].at < w[1].at));
    }
}
